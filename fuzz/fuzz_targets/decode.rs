//! Fuzz the frame decoder and the API message decoder: arbitrary bytes, split at an arbitrary
//! point, must yield frames or a typed error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize % (data.len().max(1));
    let mut d = spindle::proto::Decoder::new(64 * 1024);
    for part in [&data[..split], &data[split..]] {
        d.push(part);
        while let Ok(Some((_, payload))) = d.next_frame() {
            assert!(payload.len() <= 64 * 1024);
        }
    }
    let mut m = spindle::api::MessageDecoder::default();
    m.push(data);
    while let Ok(Some(_)) = m.next_message() {}
});
