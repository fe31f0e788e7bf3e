"""Evaluation: validation cross-entropy and halting diagnostics on a fixed set of validation windows."""
from __future__ import annotations

import numpy as np
import torch

from ..config import TrainConfig
from ..diagnostics import depth_by_topic, halting_stats, token_depth
from .data import mask_cut_documents, mask_targets
from .device import autocast


@torch.no_grad()
def evaluate(model, mc, tc: TrainConfig, data, device, seq_len) -> dict:
    """val_ce (nats per scored target), val_loss (incl. halting terms), the halting statistics and, for a
    topic-labelled folder, depth_by_topic: on the same evenly spaced windows over the whole validation split at
    every eval (eval_batches x batch_size of them)."""
    from ..data import fixed_windows
    model.eval()
    X, Y, TOPIC = fixed_windows(data["val"], data["val_topics"], tc.eval_batches * tc.batch_size, seq_len)
    Y = mask_cut_documents(X, mask_targets(Y, TOPIC, data["ignore_ids"]), data.get("cut_eot"))
    ces, n_scored, losses, auxes, depths, topics = [], [], [], [], [], []
    for i in range(tc.eval_batches):
        rows = slice(i * tc.batch_size, (i + 1) * tc.batch_size)
        x, y, topic = X[rows], Y[rows], (None if TOPIC is None else TOPIC[rows])
        xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast(tc.dtype, device):
            logits, loss, aux = model(xt, yt)
        ces.append(float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), yt.flatten(), ignore_index=-1,
                                                           reduction="sum")))
        n_scored.append(int((yt >= 0).sum()))
        losses.append(float(loss))
        auxes.append({k: v.detach().cpu() for k, v in aux.items()})
        depths.append(token_depth(aux))
        if topic is not None:
            topics.append(topic)
    model.train()
    merged = {k: torch.cat([a[k] for a in auxes]) for k in auxes[0]}
    out = dict(val_ce=sum(ces) / sum(n_scored), val_loss=float(np.mean(losses)), **halting_stats(merged, mc))
    if topics:
        out["depth_by_topic"] = depth_by_topic(np.concatenate(depths), np.concatenate(topics), data["topics"])
    return out
