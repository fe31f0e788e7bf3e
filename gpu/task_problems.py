"""The synthetic tasks' problem generators (the layouts are described in gpu/tasks.py's docstring).

A problem is (prompt, answer, measures): measures maps a name to a per-answer-character list of ints (None on an
answer-side character that is not an answer, e.g. chain's query letters). Each generator draws from `rng` only,
so a seed gives the same problems.
"""
from __future__ import annotations


def carries(a: list[int], b: list[int]) -> list[int]:
    """c[i] = carry out of digit i (least significant first) of a + b. (n,)"""
    out, c = [], 0
    for x, y in zip(a, b):
        c = int(x + y + c >= 10)
        out.append(c)
    return out


def addition_problem(rng, n: int, width: int = 0):
    """a + b with n significant digits each (n = 1 allows 0..9), written zero-padded to `width` digits (0 = n),
    answer width+1 digits, most significant first. Per answer digit at place i (0 = units):
    carry_chain = number of consecutive carries out of places i-1, i-2, .. (the run of carries arriving at i);
    lookback = 0 for i = 0, else 1 + the number of consecutive places j < i just below i with a_j + b_j = 9
    (they only pass a carry on, so the carry into i is known only further down); significant = 1 for a digit of
    the sum, 0 for a leading zero of the padded answer (a control: padding zeros need no arithmetic)."""
    width = max(width, n)
    lo = 10 ** (n - 1) if n > 1 else 0
    a_int, b_int = (int(v) for v in rng.integers(lo, 10 ** n, 2))
    a = [a_int // 10 ** i % 10 for i in range(width)]  # least significant first
    b = [b_int // 10 ** i % 10 for i in range(width)]
    c = carries(a, b)
    answer = f"{a_int + b_int:0{width + 1}d}"
    chain, look = [], []
    for i in range(width + 1):  # place i
        run = 0
        while run < i and c[i - 1 - run]:
            run += 1
        prop = 0
        while prop < i - 1 and a[i - 1 - prop] + b[i - 1 - prop] == 9:
            prop += 1
        chain.append(run)
        look.append(0 if i == 0 else 1 + prop)
    runs, longest = 0, 0
    for ci in c:
        runs = runs + 1 if ci else 0
        longest = max(longest, runs)
    prompt = f"{a_int:0{width}d}+{b_int:0{width}d}="
    digits = len(str(a_int + b_int))
    m = dict(carry_chain=chain[::-1], lookback=look[::-1], longest_carry_chain=[longest] * (width + 1),
             operand_length=[n] * (width + 1),
             significant=[int(i < digits) for i in range(width + 1)][::-1])  # answer order: most significant first
    return prompt, answer, m


def parity_problem(rng, n: int):
    bits = rng.integers(0, 2, n)
    return "".join(map(str, bits)) + "=", str(int(bits.sum()) % 2), dict(length=[n], ones=[int(bits.sum())])


PHOP_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def phop_answer(seq: str, hops: int) -> str | None:
    """Follow `hops` hops from the last position: j = last index < i with seq[j] == seq[i], then i = j + 1.
    None when a hop has no earlier occurrence to jump to."""
    i = len(seq) - 1
    for _ in range(hops):
        j = seq.rfind(seq[i], 0, i)
        if j < 0:
            return None
        i = j + 1
    return seq[i]


def phop_problem(rng, hops: int, length: int = 24, alphabet: int = 6, queries: int = 0):
    """p-hop induction: `{p}:{seq}=` -> the symbol reached after p hops (resampled until every hop is defined).
    queries > 0: the multi-query layout `{seq}|{p1}{x1}={a1}{p2}{x2}={a2}...`, where a_i is the p_i-hop answer of
    seq + x_i (x_i stands where the last symbol stood; p_i uniform in 1..hops, x_i uniform among the letters whose
    answer is defined): `queries` scored answers per sequence instead of one. The p_i, x_i and '=' are prompt."""
    letters = PHOP_ALPHABET[:alphabet]
    while True:
        seq = "".join(letters[k] for k in rng.integers(0, alphabet, length))
        if not queries:
            ans = phop_answer(seq, hops)
            if ans is not None:
                return f"{hops}:{seq}=", ans, dict(hops=[hops])
            continue
        asked = []
        for p in rng.integers(1, hops + 1, queries):
            ok = [x for x in letters if phop_answer(seq + x, int(p)) is not None]
            if not ok:
                break
            x = ok[rng.integers(0, len(ok))]
            asked.append((int(p), x, phop_answer(seq + x, int(p))))
        if len(asked) == queries:
            answer = "".join(f"{p}{x}={a}" for p, x, a in asked)  # the first "{p}{x}=" goes with the prompt
            hops = [v for p, _, _ in asked for v in (None, None, None, p)]  # per answer-side token: the answers only
            return seq + "|" + answer[:3], answer[3:], dict(hops=hops[3:])


def chain_problem(rng, hops: int, queries: int = 4):
    """Multi-query variable chasing (see the module docstring); the query letters and '?' are prompt tokens."""
    if queries * hops > len(PHOP_ALPHABET):
        raise ValueError(f"chain: {queries} queries x {hops} hops need more than {len(PHOP_ALPHABET)} variable "
                         f"names: lower --max-size to <= {len(PHOP_ALPHABET) // queries}")
    names, stmts, asked = list(rng.permutation(list(PHOP_ALPHABET))), [], []
    for d in rng.integers(1, hops + 1, queries):
        chain, value = [names.pop() for _ in range(d)], str(rng.integers(0, 10))
        stmts += [f"{chain[0]}={value}"] + [f"{chain[j]}={chain[j - 1]}" for j in range(1, d)]
        asked.append((chain[-1], value, int(d)))
    prompt = ":".join(stmts[i] for i in rng.permutation(len(stmts))) + "|"
    asked = [asked[i] for i in rng.permutation(queries)]
    answer = "".join(f"{name}?{value}" for name, value, _ in asked)
    return prompt, answer, dict(hops=[v for _, _, d in asked for v in (None, None, d)])
