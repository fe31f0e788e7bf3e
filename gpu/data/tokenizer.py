"""Tokenizers behind one small interface: `encode`, `encode_batch`, `decode`, `vocab_size`, `eot_id`, `name`.

- The bundled corpus uses a byte-level BPE (HF `tokenizers`, vocab 2048) trained offline on its train
  split and stored as `tokenizer.json` beside the shards.
- Real corpora use GPT-2's BPE (vocab 50257, `<|endoftext|>` = 50256). `gpt2_tokenizer()` fetches it at
  run time (tiktoken, else the `gpt2` tokenizer from the HF hub) and is the only network call here;
  every function that takes a tokenizer accepts any object with this interface instead.
"""
import os

from reference.files import atomic_write_text

EOT = "<|endoftext|>"
BUNDLED_VOCAB_SIZE = 2048


class HFTokenizer:
    """A `tokenizers.Tokenizer` (e.g. loaded from tokenizer.json) with the interface above."""

    def __init__(self, tok, name):
        self.tok, self.name = tok, name
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)
        if self.eot_id is None:
            raise ValueError(f"tokenizer {name!r} has no {EOT} token")

    def encode_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text):
        return self.encode_batch([text])[0]

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


class TiktokenTokenizer:
    """tiktoken's GPT-2 encoding with the interface above (text is encoded as ordinary text)."""

    def __init__(self, enc):
        self.enc, self.name = enc, enc.name
        self.vocab_size, self.eot_id = enc.n_vocab, enc.eot_token

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(list(texts))

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])


def train_bpe(texts, vocab_size=BUNDLED_VOCAB_SIZE):
    """Train a byte-level BPE on an iterable of documents: 256 byte tokens + <|endoftext|> (id 0) + merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, f"byte-level BPE {vocab_size}")


def load_tokenizer(path):
    """A tokenizer from a tokenizer.json file, or from a data folder: its tokenizer.json if it has one,
    else the tokenizer its manifest names (`gpt2` is fetched at run time)."""
    from tokenizers import Tokenizer
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            from .shards import load_manifest
            name = load_manifest(path).get("tokenizer")
            if name == "gpt2":
                return gpt2_tokenizer()
            raise FileNotFoundError(f"{path!r} has no tokenizer.json and its manifest names tokenizer {name!r}")
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer file {path!r}")
    return HFTokenizer(Tokenizer.from_file(path), os.path.abspath(path))


def gpt2_tokenizer():
    """GPT-2's BPE, fetched at run time: tiktoken if installed, else `gpt2` from the Hugging Face hub."""
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    if tiktoken is not None:
        return TiktokenTokenizer(tiktoken.get_encoding("gpt2"))
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_pretrained("gpt2")
    except Exception as e:  # no network, hub down, ...
        raise ConnectionError("could not fetch the GPT-2 tokenizer (needs network once): `pip install tiktoken` or "
                           "pass --tokenizer PATH/tokenizer.json to use a local tokenizer instead") from e
    return HFTokenizer(tok, "gpt2")


def save_tokenizer(tok, path):
    """Save an HFTokenizer as tokenizer.json atomically."""
    atomic_write_text(path, tok.tok.to_str(pretty=False))
