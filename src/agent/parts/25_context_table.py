# spindle agent, 25_context_table: this agent's nested contexts by id, and the routes to
# deeper ones (used by 30_contexts, 40_hop_cache and the dispatch in 60_main).
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


class ContextTable(object):
    """This agent's direct child contexts by id, and the routes to deeper ones.

    Deeper contexts (a via hop's children, their become contexts, ...) map to the id of the
    direct child they were seen behind. Context ids are unique per root stream (the
    controller allocates them), so a hop learns a route from the first frame that comes up
    with that `src` and forwards frames for it unchanged. The first claim wins: a subtree
    cannot take over a route another child already holds."""

    def __init__(self):
        self._lock = threading.Lock()
        self._children = {}
        self._routes = {}

    def get(self, ctx):
        """The direct child context ``ctx``, or None."""
        return self._children.get(ctx)

    def behind(self, dst):
        """The direct child deeper context ``dst`` was seen behind, or None."""
        return self._children.get(self._routes.get(dst))

    def add(self, ctx, context):
        """Registers a started child (spawn_context refused a taken id before starting it)."""
        with self._lock:
            self._children[ctx] = context

    def has(self, ctx):
        with self._lock:
            return ctx in self._children

    def claim(self, src, via):
        """Whether frames from deeper context ``src`` may come up through child ``via`` (the
        first child to carry it claims the route)."""
        with self._lock:
            if src not in self._children:
                self._routes.setdefault(src, via)
            return self._routes.get(src) == via

    def remove(self, ctx):
        """Forgets child ``ctx`` and the routes through it."""
        with self._lock:
            self._children.pop(ctx, None)
            for k in [k for k, v in self._routes.items() if v == ctx]:
                del self._routes[k]


CONTEXTS = ContextTable()
