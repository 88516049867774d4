"""A pure-Python model of `DynamicEmbedding`'s id -> row map, for the tests.

It keeps the same state as `keras_lookup._dynamic.RowMap` in Python lists and
dicts and applies the policy as `RowMap`'s docstring states it, one training
step at a time. Only the admission slot and tag of a key come from the layer's
own hash (`slot_and_tag`): they are a hash, not a policy.
"""

FREE = 2**63 - 1


class ReferenceMap:
    def __init__(
        self,
        capacity,
        eviction="lru",
        min_count=1,
        eviction_batch=None,
        lfu_half_life=1000,
        admission_slots=None,
        slot_and_tag=None,
    ):
        self.capacity = capacity
        self.eviction = eviction
        self.min_count = min_count
        self.eviction_batch = eviction_batch or max(1, capacity // 64)
        self.lfu_half_life = lfu_half_life
        self.admission_slots = admission_slots or capacity
        self.slot_and_tag = slot_and_tag
        self.rows = {}
        self.row_keys = [None] * capacity
        self.free = list(range(capacity - 1, -1, -1))  # popped from the end
        self.last_seen = [FREE] * capacity
        self.counts = [0] * capacity
        self.pending = {}  # slot -> [tag, count]
        self.clock = 0
        self.admitted = self.evicted = self.no_row = 0

    def step(self, keys):
        """One training step over the flat list `keys`; returns their rows."""
        self.clock += 1
        now = self.clock
        order, seen = [], {}
        for key in keys:
            if key not in seen:
                order.append(key)
                seen[key] = 0
            seen[key] += 1
        found = [k for k in order if k in self.rows]
        for key in found:
            row = self.rows[key]
            if self.eviction == "lfu":
                self.counts[row] = self._aged(row, now) + seen[key]
            self.last_seen[row] = now
        new = [k for k in order if k not in self.rows]
        totals = {}
        if self.min_count > 1:
            hashes = self.slot_and_tag(new)
            for key, (slot, tag) in zip(new, hashes, strict=True):
                held = self.pending.get(slot)
                before = held[1] if held and held[0] == tag else 0
                totals[key] = (slot, tag, before + seen[key])
            admitted = [k for k in new if totals[k][2] >= self.min_count]
        else:
            admitted = new
        if self.eviction is not None and len(admitted) > len(self.free):
            shortfall = len(admitted) - len(self.free)
            evictable = self.capacity - len(self.free) - len(found)
            count = min(max(shortfall, self.eviction_batch), evictable)
            if count > 0:
                self._evict(count, now)
        placed = admitted[: len(self.free)]
        for key in placed:
            row = self.free.pop()
            self.rows[key] = row
            self.row_keys[row] = key
            self.last_seen[row] = now if self.eviction is not None else FREE
            self.counts[row] = seen[key] if self.eviction == "lfu" else 0
            self.admitted += 1
        if self.min_count > 1:
            placed_set = set(placed)
            for key in placed:
                slot, tag, _ = totals[key]
                if self.pending.get(slot, [None])[0] == tag:
                    self.pending[slot][1] = 0
            taken = set()
            for key in new:
                slot, tag, total = totals[key]
                if key not in placed_set and slot not in taken:
                    taken.add(slot)
                    self.pending[slot] = [tag, total]
        self.no_row += sum(seen[k] for k in order if k not in self.rows)
        return [self.rows.get(k, -1) for k in keys]

    def _aged(self, row, now):
        period = self.lfu_half_life
        halvings = min(now // period - self.last_seen[row] // period, 63)
        return self.counts[row] >> halvings

    def _score(self, row, now):
        last = self.last_seen[row]
        if self.eviction == "lru":
            return last
        if last in (FREE, now):
            return FREE
        aged = min(self._aged(row, now), 2**31 - 1)
        return (aged << 32) + min(last, 2**32 - 1)

    def _evict(self, count, now):
        order = sorted(range(self.capacity), key=lambda r: (self._score(r, now), r))
        victims = order[:count]
        for row in victims:
            del self.rows[self.row_keys[row]]
            self.row_keys[row] = None
            self.last_seen[row] = FREE
            self.counts[row] = 0
        self.free.extend(reversed(victims))
        self.evicted += count

    def counters(self):
        return {
            "admitted": self.admitted,
            "evicted": self.evicted,
            "no_row": self.no_row,
        }
