"""A cross-call KV cache keyed by token prefix: a radix tree over token ids, bounded in bytes, LRU-evicted.

In the manner of SGLang's RadixAttention (Zheng et al., 2024): every sequence a backend ran through
its model leaves its keys and values in a radix tree whose edges are runs of token ids, so a later
call whose prompt starts with a cached prefix runs only the rest. A search asks the model about the
same states over and over (propose the candidates of a state, score them under the solve prompt,
value its children): with this cache each state's prompt + response is computed once.

Per node: ``kv`` ``[L, 2, H, T, D]`` (layers, key/value, KV heads, the node's T tokens, head size) at
the absolute positions its tokens have in the sequence (0 for the first prompt token), and
optionally ``hidden`` ``[T, hidden]``, the model's final hidden state at each token (what a value
head reads). Stored tensors are contiguous copies, never views of a batch, so :attr:`PrefixCache.bytes`
(the sum of their sizes) is the memory the cache holds. Before a node is added, least recently
used leaves are evicted until it fits the budget; the tree never holds more than ``budget_bytes``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import torch

SpanFn = Callable[[int, int], torch.Tensor | None]  # (start, end) token positions -> tensor for them
EVICT_SLACK = 16  # an eviction frees at least 1/EVICT_SLACK of the budget, so heaps are built rarely
PROBE_ELEMENTS = 16  # elements of each trainable parameter a weights fingerprint reads


class _Node:
    __slots__ = ("tokens", "kv", "hidden", "children", "parent", "last_access")

    def __init__(self, tokens: tuple[int, ...], kv, hidden, parent: _Node | None, tick: int):
        self.tokens = tokens
        self.kv = kv  # [L, 2, H, len(tokens), D], None at the root only
        self.hidden = hidden  # [len(tokens), hidden] or None
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.last_access = tick

    @property
    def nbytes(self) -> int:
        size = self.kv.numel() * self.kv.element_size() if self.kv is not None else 0
        return size + (self.hidden.numel() * self.hidden.element_size() if self.hidden is not None else 0)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Keys and values (and final hidden states) of token prefixes, within ``budget_bytes``.

    >>> cache = PrefixCache(10_000)
    >>> kv = torch.zeros(1, 2, 1, 5, 4)  # one layer, one head, five tokens, head size 4
    >>> cache.insert([1, 2, 3, 4, 5], lambda a, b: kv[:, :, :, a:b])
    >>> cache.match([1, 2, 3, 9])[0], cache.match([1, 2, 3, 4, 5], limit=4)[0]
    (3, 4)
    """

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0 (0 turns the prefix cache off), got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self.bytes = 0  # what the stored tensors take now
        self.peak_bytes = 0  # the most they ever took
        self.evicted = 0  # nodes evicted so far
        self._tick = 0
        self._root = _Node((), None, None, None, 0)

    def clear(self) -> None:
        """Forget every entry (the model's weights changed: its keys and values are stale)."""
        self._root = _Node((), None, None, None, self._tick)
        self.bytes = 0

    @property
    def num_nodes(self) -> int:
        count, stack = 0, [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count - 1

    def stored_bytes(self) -> int:
        """The storage the tree's tensors actually hold, counted from the tensors themselves (equals
        :attr:`bytes`: no stored tensor is a view keeping a larger batch alive)."""
        total, stack = 0, [self._root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            for tensor in (node.kv, node.hidden):
                total += tensor.untyped_storage().nbytes() if tensor is not None else 0
        return total

    def match(self, tokens: Sequence[int], limit: int | None = None) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of ``tokens[:limit]``: its length and its ``[L, 2, H, length, D]``
        keys and values (None when nothing matched; read-only: it may be a view of a node's tensor).
        Marks the path as used."""
        length, pieces = self.match_pieces(tokens, limit)
        if not pieces:
            return 0, None
        return length, pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=3)

    def match_pieces(self, tokens: Sequence[int], limit: int | None = None) -> tuple[int, list[torch.Tensor]]:
        """As :meth:`match`, the keys and values left as one read-only view per tree node on the path
        (in order), so a caller copies them once, straight into its batch."""
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        self._tick += 1
        node, pos, pieces = self._root, 0, []
        while pos < limit:
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = common_prefix(child.tokens, tokens[pos:limit])
            child.last_access = self._tick
            pieces.append(child.kv[:, :, :, :n])
            pos += n
            if n < len(child.tokens):
                break
            node = child
        return pos, pieces

    def hidden_at(self, tokens: Sequence[int]) -> torch.Tensor | None:
        """The final hidden state at the last token of ``tokens`` when the whole sequence is cached with
        its hidden states, else None."""
        self._tick += 1
        node, pos = self._root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                return None
            n = common_prefix(child.tokens, tokens[pos:])
            child.last_access = self._tick
            pos += n
            if pos == len(tokens):
                return None if child.hidden is None else child.hidden[n - 1]
            if n < len(child.tokens):
                return None
            node = child
        return None

    def insert(self, tokens: Sequence[int], kv_fn: SpanFn, hidden_fn: SpanFn | None = None) -> None:
        """Cache ``tokens``: ``kv_fn(a, b)`` gives the ``[L, 2, H, b - a, D]`` keys and values of positions
        ``a:b``, ``hidden_fn(a, b)`` their ``[b - a, hidden]`` final hidden states (or None where not known).
        Only the part not cached yet is asked for; nothing is stored when it does not fit the budget."""
        self._tick += 1
        tokens = tuple(int(t) for t in tokens)
        node, pos, path = self._root, 0, {id(self._root)}
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = common_prefix(child.tokens, tokens[pos:])
            if n < len(child.tokens):
                child = self._split(child, n)
            child.last_access = self._tick
            path.add(id(child))
            if child.hidden is None and hidden_fn is not None:  # fill in hidden states learnt since
                hidden = hidden_fn(pos, pos + n)
                if hidden is not None:
                    self._add(child, "hidden", hidden, path)
            pos += n
            node = child
        if pos == len(tokens):
            return
        kv = kv_fn(pos, len(tokens))
        hidden = hidden_fn(pos, len(tokens)) if hidden_fn is not None else None
        leaf = _Node(tokens[pos:], None, None, node, self._tick)
        if not self._add(leaf, "kv", kv, path):
            return
        node.children[tokens[pos]] = leaf
        if hidden is not None:
            self._add(leaf, "hidden", hidden, path | {id(leaf)})

    def _add(self, node: _Node, name: str, tensor: torch.Tensor, protected: set[int]) -> bool:
        """Store a contiguous copy of ``tensor`` as ``node.<name>`` if room can be made for it."""
        size = tensor.numel() * tensor.element_size()
        if size > self.budget_bytes or not self._make_room(size, protected):
            return False
        setattr(node, name, tensor.detach().clone(memory_format=torch.contiguous_format))
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def _split(self, node: _Node, n: int) -> _Node:
        """Cut ``node``'s edge after ``n`` tokens; returns the new upper node (copies: no shared storage)."""
        upper = _Node(node.tokens[:n], node.kv[:, :, :, :n].clone(), None, node.parent, node.last_access)
        if node.hidden is not None:
            upper.hidden = node.hidden[:n].clone()
            node.hidden = node.hidden[n:].clone()
        node.kv = node.kv[:, :, :, n:].clone()
        node.tokens = node.tokens[n:]
        node.parent.children[upper.tokens[0]] = upper
        upper.children[node.tokens[0]] = node
        node.parent = upper
        return upper

    def _make_room(self, size: int, protected: set[int]) -> bool:
        """Evict least recently used leaves (never the ``protected`` ones) until ``size`` more bytes fit."""
        excess = self.bytes + size - self.budget_bytes
        if excess <= 0:
            return True
        target = self.bytes - max(excess, self.budget_bytes // EVICT_SLACK)
        heap, stack = [], [self._root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if not node.children and node is not self._root and id(node) not in protected:
                heap.append((node.last_access, id(node), node))
        heapq.heapify(heap)
        while heap and self.bytes > target:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[leaf.tokens[0]]
            self.bytes -= leaf.nbytes
            self.evicted += 1
            if not parent.children and parent is not self._root and id(parent) not in protected:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return self.bytes + size <= self.budget_bytes


# -- between the tree and a batch -------------------------------------------------------------------


def supports_prefix_cache(model) -> bool:
    """Whether ``model``'s KV cache is one plain full-attention layer per block (not sliding windows,
    not recurrent state): only those can be cut per token and glued back together."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a model whose config transformers cannot read a cache layout from
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def weights_fingerprint(model) -> int:
    """Changes whenever a parameter is replaced or written in place (an optimizer step, a loaded state
    dict, a merged adapter), so a cache built on the old weights can be dropped: the parameters' version
    counters, and a few elements of every trainable one (kernels that write through ``.data`` or raw
    pointers, as bitsandbytes' 8-bit optimizers do, leave the counters as they were)."""
    params = list(model.parameters())
    probes = [p.detach().reshape(-1)[:: max(1, p.numel() // PROBE_ELEMENTS)].float() for p in params if p.requires_grad]
    content = torch.cat(probes).cpu().numpy().tobytes() if probes else b""
    return hash((tuple((id(p), p._version) for p in params), content))


def row_kv(cache, row: int, columns: torch.Tensor) -> torch.Tensor:
    """``[L, 2, H, len(columns), D]``: one batch row's keys and values at the given cache columns."""
    return torch.stack(
        [
            torch.stack((layer.keys[row].index_select(1, columns), layer.values[row].index_select(1, columns)))
            for layer in cache.layers
        ]
    )


def dynamic_cache(past: torch.Tensor, config):
    """transformers' cache over the keys and values of :func:`past_tensor` (views, no copy)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache([(layer[0], layer[1]) for layer in past], config=config)


def past_tensor(rows: Sequence[Sequence[torch.Tensor]], room: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of keys and values from each row's cached prefix, given as ``[L, 2, H, t, D]`` pieces
    in order (an empty list: nothing cached): one ``[L, 2, B, H, width + room, D]`` tensor, every piece copied
    once into place, the last ``room`` columns left unset for what runs next; and its ``[B, width]`` attention
    mask (long, on their device)."""
    lengths = [sum(piece.shape[3] for piece in pieces) for pieces in rows]
    width = max(lengths)
    like = next(pieces[0] for pieces in rows if pieces)
    num_layers, _, heads, _, size = like.shape
    past = like.new_empty((num_layers, 2, len(rows), heads, width + room, size))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=like.device)
    for i, (pieces, m) in enumerate(zip(rows, lengths, strict=True)):
        past[:, :, i, :, : width - m] = 0  # padding: masked, but kept finite
        start = width - m
        for piece in pieces:
            past[:, :, i, :, start : start + piece.shape[3]] = piece
            start += piece.shape[3]
        mask[i, width - m :] = 1
    return past, mask


def stack_batches(parts: Sequence[tuple[object, torch.Tensor, torch.Tensor]], config):
    """One left-padded batch KV cache from several, and its attention mask: ``parts`` as (KV cache, ``[b, t]``
    mask, the ``b`` rows of the stacked batch that its rows become). Keys and values are copied once,
    right-aligned; the padding is masked, and kept finite."""
    from transformers.cache_utils import DynamicCache

    width = max(mask.shape[1] for _, mask, _ in parts)
    num_rows = sum(mask.shape[0] for _, mask, _ in parts)
    like = parts[0][1]
    mask = like.new_zeros((num_rows, width))
    layers, of_parts = [], [cache.layers for cache, _, _ in parts]
    for layer in range(len(of_parts[0])):
        k = of_parts[0][layer].keys
        keys, values = (
            k.new_zeros((num_rows, k.shape[1], width, k.shape[3])),
            k.new_zeros((num_rows, k.shape[1], width, k.shape[3])),
        )
        for part_layers, (_, part_mask, rows) in zip(of_parts, parts, strict=True):
            t = part_mask.shape[1]
            keys[rows, :, width - t :] = part_layers[layer].keys
            values[rows, :, width - t :] = part_layers[layer].values
        layers.append((keys, values))
    for _, part_mask, rows in parts:
        mask[rows, width - part_mask.shape[1] :] = part_mask
    return DynamicCache(layers, config=config), mask


class LastHidden:
    """Within the block, ``.value`` holds the final hidden state of every position (``hidden_states[-1]``) of
    the model's last forward pass, at no extra cost: the decoder's output, whichever positions the output
    layer then reads (``logits_to_keep``); for a model with no separate decoder, the output layer's input."""

    def __init__(self, model):
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        self.decoder = decoder if isinstance(decoder, torch.nn.Module) and decoder is not model else None
        self.module = self.decoder or model.get_output_embeddings()
        self.value: torch.Tensor | None = None

    def __enter__(self) -> LastHidden:
        if self.decoder is not None:
            self._handle = self.module.register_forward_hook(self._decoder_hook)
        else:
            self._handle = self.module.register_forward_pre_hook(self._head_hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _decoder_hook(self, _module, _args, output) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        self.value = hidden if hidden is not None else output[0]

    def _head_hook(self, _module, args) -> None:
        self.value = args[0]
