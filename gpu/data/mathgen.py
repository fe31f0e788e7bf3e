"""Seeded generator of math worksheets: problems with worked, checkable solutions at five levels.

Every problem reads

    Problem: <question>
    Solution:
    [label: ]<expr> = <expr>     one line per step; both sides are exact (integers, decimals, a/b)
    Answer: <number> | x = <number> | <q> remainder <r>

Levels: 1 one-step arithmetic, 2 multi-digit arithmetic (place values, partial products, division with
remainder), 3 order of operations, 4 word problems, 5 fractions, percentages and linear equations.
`worksheet(rng, level)` is one document; `math_documents(seed, max_chars)` the math part of the corpus.
"""
import math
import random
from fractions import Fraction

LEVELS = {1: "one-step arithmetic", 2: "multi-digit arithmetic", 3: "order of operations",
          4: "word problems", 5: "fractions, percentages and equations"}
NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam", "Maya",
         "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
ITEMS = ["notebooks", "pens", "apples", "tickets", "mugs", "batteries", "stamps", "candles", "plants", "books"]
THINGS = ["marbles", "stickers", "cards", "sweets", "shells", "coins", "beads", "pencils"]
OPS = {"+": (1, lambda a, b: a + b), "-": (1, lambda a, b: a - b), "*": (2, lambda a, b: a * b),
       "/": (2, lambda a, b: a // b)}


def money(cents):
    return f"{cents // 100}.{cents % 100:02d}"


def frac(f):
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def fmt(question, steps, answer):
    return "Problem: " + question + "\nSolution:\n" + "\n".join(steps) + f"\nAnswer: {answer}"


def level1(rng):
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(5, 99), rng.randint(1, 99))
    if op == "-" and b > a:
        a, b = b, a
    c = OPS[op][1](a, b)
    q = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"Evaluate {a} {op} {b}."])
    return fmt(q, [f"{a} {op} {b} = {c}"], c)


def level2(rng):
    kind = rng.choice(["add", "mul", "div"])
    if kind == "add":
        a, b = rng.randint(1000, 9999), rng.randint(1000, 9999)
        digits = zip(str(a)[::-1], str(b)[::-1])  # ones first
        parts = [(int(x) * 10 ** p, int(y) * 10 ** p) for p, (x, y) in enumerate(digits)][::-1]
        steps = [f"{x} + {y} = {x + y}" for x, y in parts]
        steps.append(" + ".join(str(x + y) for x, y in parts) + f" = {a + b}")
        return fmt(f"Add {a} and {b}, place value by place value.", steps, a + b)
    if kind == "mul":
        a, b = rng.randint(100, 9999), rng.randint(12, 99)
        ones, tens = b % 10, b - b % 10
        steps = [f"{a} * {ones} = {a * ones}", f"{a} * {tens} = {a * tens}", f"{a * ones} + {a * tens} = {a * b}"]
        return fmt(f"Multiply {a} by {b} using partial products.", steps, a * b)
    d, q = rng.randint(3, 25), rng.randint(20, 999)
    r = rng.randint(0, d - 1)
    a = d * q + r
    steps = [f"{d} * {q} = {d * q}", f"{a} - {d * q} = {r}", f"{d} * {q} + {r} = {a}"]
    return fmt(f"Divide {a} by {d}. Give the quotient and the remainder.", steps, f"{q} remainder {r}")


def expr_tree(rng, depth):
    """A random integer expression: an int leaf or (op, left, right); divisions are exact by construction."""
    if depth == 0 or rng.random() < 0.25:
        return rng.randint(1, 20)
    op = rng.choice("+-*/")
    if op == "/":
        b = rng.randint(2, 9)
        return ("/", b * rng.randint(1, 12), b)
    return (op, expr_tree(rng, depth - 1), expr_tree(rng, depth - 1))


def render(t, parent=0, right=False):
    if isinstance(t, int):
        return str(t)
    op, a, b = t
    prec = OPS[op][0]
    s = f"{render(a, prec)} {op} {render(b, prec, True)}"
    return f"({s})" if prec < parent or (right and prec == parent) else s


def reduce(t, steps):
    """Evaluate `t` innermost first, appending one 'a op b = c' step per operation."""
    if isinstance(t, int):
        return t
    op, a, b = t
    x, y = reduce(a, steps), reduce(b, steps)
    c = OPS[op][1](x, y)
    steps.append(f"{x} {op} {y} = {c}")
    return c


def level3(rng):
    t = expr_tree(rng, 3)
    while isinstance(t, int) or isinstance(t[1], int) and isinstance(t[2], int):
        t = expr_tree(rng, 3)
    steps = []
    c = reduce(t, steps)
    e = render(t)
    return fmt(rng.choice([f"Evaluate {e}.", f"Compute {e}.", f"What is {e}?"]), steps, c)


def level4(rng):
    name, kind = rng.choice(NAMES), rng.choice(["shop", "trip", "share", "ages", "garden", "recipe"])
    if kind == "shop":
        n, p = rng.randint(2, 9), rng.randint(5, 60) * 25
        bill = next(b for b in (500, 1000, 2000, 5000, 10000, 50000) if b > n * p)
        q = (f"{name} buys {n} {rng.choice(ITEMS)} at ${money(p)} each and pays with a ${money(bill)} bill. "
             "How much change does " + name + " get?")
        return fmt(q, [f"Cost: {n} * {money(p)} = {money(n * p)}", f"Change: {money(bill)} - {money(n * p)} = "
                       f"{money(bill - n * p)}"], money(bill - n * p))
    if kind == "trip":
        v1, t1, v2, t2 = rng.randint(4, 12) * 10, rng.randint(1, 5), rng.randint(4, 12) * 10, rng.randint(1, 4)
        q = (f"{name} drives at {v1} km/h for {t1} hours, then at {v2} km/h for {t2} hours. "
             "How many kilometres is the whole trip?")
        return fmt(q, [f"First part: {v1} * {t1} = {v1 * t1}", f"Second part: {v2} * {t2} = {v2 * t2}",
                       f"Total: {v1 * t1} + {v2 * t2} = {v1 * t1 + v2 * t2}"], v1 * t1 + v2 * t2)
    if kind == "share":
        k, each = rng.randint(3, 9), rng.randint(4, 30)
        r = rng.randint(0, k - 1)
        total = k * each + r
        q = (f"{name} has {total} {rng.choice(THINGS)} and shares them equally among {k} friends. "
             "How many does each friend get, and how many are left over?")
        return fmt(q, [f"{k} * {each} = {k * each}", f"{total} - {k * each} = {r}", f"{k} * {each} + {r} = {total}"],
                   f"{each} remainder {r}")
    if kind == "ages":
        other, b, m, n = rng.choice(NAMES), rng.randint(3, 15), rng.randint(2, 4), rng.randint(2, 10)
        s = (m + 1) * b + 2 * n
        q = (f"{name} is {m} times as old as {other}. In {n} years their ages will add up to {s}. "
             f"How old is {other} now?")
        return fmt(q, [f"{s} - 2 * {n} = {s - 2 * n}", f"{m} + 1 = {m + 1}", f"{s - 2 * n} / {m + 1} = {b}",
                       f"Check: {m} * {b} + {n} + {b} + {n} = {s}"], b)
    if kind == "garden":
        L, W = rng.randint(3, 40), rng.randint(2, 30)
        if rng.random() < 0.5:
            return fmt(f"A garden is {L} m long and {W} m wide. What is its perimeter in metres?",
                       [f"{L} + {W} = {L + W}", f"2 * {L + W} = {2 * (L + W)}"], 2 * (L + W))
        return fmt(f"A garden is {L} m long and {W} m wide. What is its area in square metres?",
                   [f"{L} * {W} = {L * W}"], L * W)
    serves, per, want = rng.choice([2, 4, 5, 6, 8]), rng.randint(5, 40), rng.randint(2, 12)
    grams = serves * per
    q = f"A recipe for {serves} people needs {grams} g of flour. How many grams are needed for {want} people?"
    return fmt(q, [f"Per person: {grams} / {serves} = {per}", f"{per} * {want} = {per * want}"], per * want)


def level5(rng):
    kind = rng.choice(["fraction", "percent", "equation"])
    if kind == "fraction":
        a, b = (Fraction(rng.randint(1, d - 1), d) for d in (rng.randint(2, 9), rng.randint(2, 9)))
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        den = a.denominator * b.denominator // math.gcd(a.denominator, b.denominator)
        na, nb = a.numerator * den // a.denominator, b.numerator * den // b.denominator
        nc = na + nb if op == "+" else na - nb
        c = Fraction(nc, den)
        steps = [f"{frac(a)} = {na}/{den}", f"{frac(b)} = {nb}/{den}", f"{na}/{den} {op} {nb}/{den} = {nc}/{den}"]
        if c.denominator != den:
            steps.append(f"{nc}/{den} = {frac(c)}")
        return fmt(f"What is {frac(a)} {op} {frac(b)}?", steps, frac(c))
    if kind == "percent":
        p, base = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75]), rng.randint(1, 40) * 20
        return fmt(f"Find {p}% of {base}.", [f"{base} * {p} / 100 = {base * p // 100}"], base * p // 100)
    a, x, b = rng.randint(2, 12), rng.randint(-10, 20), rng.randint(1, 50)
    if rng.random() < 0.5:
        c = a * x + b
        steps = [f"{c} - {b} = {c - b}", f"{c - b} / {a} = {x}", f"Check: {a} * {x} + {b} = {c}"]
        return fmt(f"Solve for x: {a}x + {b} = {c}.", steps, f"x = {x}")
    c = a * x - b
    steps = [f"{c} + {b} = {c + b}", f"{c + b} / {a} = {x}", f"Check: {a} * {x} - {b} = {c}"]
    return fmt(f"Solve for x: {a}x - {b} = {c}.", steps, f"x = {x}")


PROBLEMS = {1: level1, 2: level2, 3: level3, 4: level4, 5: level5}


def worksheet(rng, level, n=None):
    """One document: a titled worksheet of 4-8 problems at one level."""
    n = n or rng.randint(4, 8)
    body = "\n\n".join(PROBLEMS[level](rng) for _ in range(n))
    return f"Worksheet, level {level} ({LEVELS[level]})\n\n{body}\n"


def math_documents(seed, max_chars):
    """Worksheets from `random.Random(seed)`, levels uniform, until they hold at least `max_chars` characters."""
    rng, docs, n = random.Random(seed), [], 0
    while n < max_chars:
        docs.append(worksheet(rng, rng.randint(1, 5)))
        n += len(docs[-1])
    return docs
