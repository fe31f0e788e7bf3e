"""The lm-evaluation-harness model `adaloop` (registered in the harness's model registry on import).

    python -m gpu.eval --model adaloop --model_args run=runs/tiny,loops=8,halt_threshold=0.05 --tasks adaloop_cloze

model_args: run = a gpu.train run folder (its newest checkpoint and its data folder's tokenizer), or any model
gpu.convert reads (a model folder with a tokenizer.json beside the weights, a .safetensors file); data = another
data folder for the tokenizer (and a run's moved data); tokenizer = a tokenizer.json; loops = the most loop steps a
token may take at evaluation (test-time depth: the trained halting rule decides within it); halt_threshold = the
halting rule's threshold (act_eps, converge_tol or exit_threshold); dtype = float32 | float64 | bfloat16;
kv_cache = true | false (generate_until decodes with gpu.cache.KVCache through gpu.generate.generate).

Requests (lm_eval.api.model):
- loglikelihood (context, continuation): log p(continuation | context) summed over its tokens, and whether greedy
  decoding produces it; an empty context conditions on <|endoftext|>, the bundled corpus's document separator.
  Context longer than block_size keeps its last tokens (block_size in all, with the continuation); a continuation
  longer than block_size is scored in windows of block_size predictions, as a rolling log-likelihood.
- loglikelihood_rolling (text): the text's log-likelihood from <|endoftext|>, in disjoint windows of block_size
  predictions each conditioned on as much preceding text as fits (lm_eval.utils.get_rolling_token_windows).
- generate_until (context, {until, max_gen_toks, temperature}): greedy (or sampled) decoding until a stop string,
  <|endoftext|> or max_gen_toks tokens.
Sequences of a batch are padded on the right: attention is causal and a token's halting reads its own state only,
so padding changes no scored position.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from reference.halting import get_rule

from ..convert.source import read_source
from ..data import load_tokenizer
from ..probe import params_for, with_halting

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def load_lm(run, data=None, tokenizer=None, loops=None, halt_threshold=None, device="cpu", dtype="float32"):
    """(model in eval mode, tokenizer) for the model_args above; ValueError naming the fix for bad ones."""
    from ..model import from_reference
    src = read_source(run, data)
    cfg = src.cfg
    if halt_threshold is not None:
        field = get_rule(cfg.halt).threshold_field
        if field is None:
            raise ValueError(f"halt_threshold: halt={cfg.halt!r} has no threshold (act, pondernet, converge and "
                             f"exit_gate do)")
        cfg = with_halting(cfg, **{field: float(halt_threshold)})
    if loops is not None:
        if not isinstance(loops, int) or loops < 1:
            raise ValueError(f"loops={loops!r}: expected an int >= 1")
        cfg = with_halting(cfg, max_loops=loops)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    tok_path = tokenizer or (data if data and src.kind != "run" else None) or src.tokenizer
    if tok_path is None:
        raise ValueError(f"no tokenizer for {run!r}: pass tokenizer=PATH/tokenizer.json or data=DATA_FOLDER")
    model = from_reference(params_for(src.params, cfg), cfg, device=device, dtype=DTYPES[dtype])
    return model.eval(), load_tokenizer(tok_path)


def pick_device(device) -> torch.device:
    """The device for model_args/--device: the harness's default `cuda:0` falls back to the CPU (with a warning)
    where torch sees no CUDA device; None = auto."""
    from ..train.device import resolve_device
    device = str(device or "auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        import logging
        logging.getLogger(__name__).warning("device %s: torch sees no CUDA device, evaluating on the CPU", device)
        device = "cpu"
    return resolve_device(device)


@register_model("adaloop")
class AdaloopLM(TemplateLM):
    """An adaloop model (gpu.model.LoopedTransformer) behind the harness's three request types."""

    backend = "causal"

    def __init__(self, run=None, data=None, tokenizer=None, loops=None, halt_threshold=None, dtype="float32",
                 kv_cache=True, device=None, batch_size=16, max_batch_size=None, **unused):
        super().__init__()
        if run is None:
            raise ValueError("the adaloop model needs run=RUN: --model_args run=runs/tiny (a gpu.train run folder)")
        self._device = pick_device(device)
        self.model, self.tok = load_lm(str(run), data, tokenizer, loops, halt_threshold, self._device, dtype)
        self.cfg, self.kv_cache = self.model.cfg, bool(kv_cache)
        self.batch_size = 32 if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self.tokenizer = None  # no chat template

    # ------------------------------------------------------------------ tokenization
    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self.cfg.block_size

    @property
    def tokenizer_name(self) -> str:
        return os.path.basename(str(self.tok.name))

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return list(self.tok.encode(string))

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode(tokens)

    # ------------------------------------------------------------------ scoring
    def windows(self, ctx, cont) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) chunks of at most block_size predictions each whose continuations tile `cont`,
        each with as much of the preceding tokens as fits: log p(cont | ctx) is the sum over the chunks."""
        L, seq, start, out = self.max_length, list(ctx) + list(cont), len(ctx), []
        while start < len(seq):
            end = min(start + L, len(seq))
            out.append((seq[max(0, end - 1 - L):start], seq[start:end]))
            start = end
        return out

    @torch.no_grad()
    def score(self, pairs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy?) of each (context ids, continuation ids) pair; the context keeps
        its last tokens, and a continuation longer than block_size is scored in windows (self.windows)."""
        rows = [(i, w) for i, (ctx, cont) in enumerate(pairs) for w in self.windows(ctx, cont)]  # (owner, window)
        rows = [(i, (ctx + cont)[:-1], cont) for i, (ctx, cont) in rows]  # (owner, input ids, predicted ids)
        total, greedy = [0.0] * len(pairs), [True] * len(pairs)
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r][1]))  # similar lengths share a batch
        for s in range(0, len(order), self.batch_size):
            batch = [rows[r] for r in order[s:s + self.batch_size]]
            x = torch.full((len(batch), len(batch[0][1])), self.eot_token_id, dtype=torch.int64)
            for b, (_, inp, _) in enumerate(batch):
                x[b, :len(inp)] = torch.tensor(inp)
            logp = F.log_softmax(self.model(x.to(self._device))[0].double(), dim=-1).cpu()  # (b, width, V)
            for b, (i, inp, cont) in enumerate(batch):
                lp = logp[b, len(inp) - len(cont):len(inp)]  # (n_cont, V): the positions that predict cont
                target = torch.tensor(cont)
                total[i] += float(lp.gather(-1, target[:, None]).sum())
                greedy[i] = greedy[i] and bool((lp.argmax(-1) == target).all())
        return list(zip(total, greedy))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        results = self.score([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """The disjoint (context, continuation) windows whose continuations tile the tokens of `text`."""
        windows = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                                                     max_seq_len=self.max_length, context_len=1)
        return [lm_utils.make_disjoint_window(w) for w in windows]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            total = sum(ll for ll, _ in self.score(self.rolling_windows(text)))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else [u for u in until if u]
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            text = self.continue_text(context, int(kwargs.get("max_gen_toks", 256)), until, temperature)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            out.append(text)
        return out

    def continue_text(self, context: str, max_new: int, until=(), temperature: float = 0.0, chunk: int = 16) -> str:
        """Decode from `context` (its last block_size tokens) with gpu.generate.generate, `chunk` tokens a call, until
        a stop string, <|endoftext|> or max_new tokens; the text before the stop."""
        from ..generate import generate
        ids = (self.tok_encode(context) or [self.eot_token_id])[-self.max_length:]
        x, new = torch.tensor([ids], dtype=torch.int64, device=self._device), []
        while len(new) < max_new:
            n = min(chunk, max_new - len(new))
            x, _ = generate(self.model, x, n, temperature, use_cache=self.kv_cache)
            new += x[0, -n:].tolist()
            text = self.tok_decode(new[:new.index(self.eot_token_id)] if self.eot_token_id in new else new)
            if self.eot_token_id in new or any(stop in text for stop in until):
                break
            x = x[:, -self.max_length:]  # the window slides
        for stop in until:
            text = text.split(stop)[0]
        return text


__all__ = ["AdaloopLM", "load_lm"]
