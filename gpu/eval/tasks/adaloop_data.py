"""The data of the shipped lm-eval tasks (the YAML files beside this one): bundled_val.jsonl, one row per document of
the bundled corpus's validation split that the builder kept (`python -m gpu.eval.build_tasks` writes it)."""
import json
import os
import re

JSONL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled_val.jsonl")


def rows(path=JSONL):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(**kwargs):
    """The harness's custom_dataset hook: a DatasetDict with one `test` split, read offline from the jsonl."""
    import datasets
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows())})


def perplexity_results(doc, results):
    """Per document: (log-likelihood, count) pairs that weighted_perplexity / bits_per_byte aggregate over tokens
    (of the bundled tokenizer, stored as n_tokens), words and UTF-8 bytes."""
    (loglikelihood,) = results
    n_bytes = len(doc["text"].encode("utf-8"))
    return {"token_perplexity": (loglikelihood, doc["n_tokens"]),
            "word_perplexity": (loglikelihood, len(re.split(r"\s+", doc["text"]))),
            "byte_perplexity": (loglikelihood, n_bytes), "bits_per_byte": (loglikelihood, n_bytes)}
