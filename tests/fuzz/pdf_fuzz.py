"""Mutation fuzzer for the PDF inputs of sealing and verification (not part of ``make test``).

    .venv/bin/python -m tests.fuzz.pdf_fuzz --seconds 600              # in-process targets
    .venv/bin/python -m tests.fuzz.pdf_fuzz --seconds 300 --live       # a running gateway

Seeds are the named hostile documents of :mod:`tests.fuzz.cases`; each round takes one,
applies a few structure-aware mutations (extreme numbers, references that loop, deep
nesting, cut or doubled ranges, changed keys) and runs the result. In-process, a child runs
it through sealing, verification and the receipt reader (:mod:`tests.fuzz.harness`); live,
it is posted to ``sign/pdf`` (in memory and spooled), ``/v1/verify`` and
``/v1/receipts/verify`` of a gateway started as the interop tests start one. A finding is a
server error or uncaught exception, more than ``--cpu`` seconds or ``--rss`` MB for one
input, a 200 whose sealed PDF pyHanko or pdfsig rejects, or an audit event recording a seal
no answer returned. Findings are written to ``--out`` (default a temporary directory), never
into the repository.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.fuzz.cases import CASES

# Seeds small enough to mutate and run many times a minute.
_SEED_LIMIT = 512 * 1024
_NUMBER = re.compile(rb"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_NAME = re.compile(rb"/[A-Za-z]+")
_REF = re.compile(rb"\d+ 0 R")
_EXTREMES = [b"0", b"-1", b"1", b"2147483647", b"2147483648", b"-2147483649",
             b"99999999999999999999", b"1e400", b"nan", b"-0.0", b"3.4e38", b"65535",
             b"4294967296", b"1.5", b"-99999"]
_KEYS = [b"/Parent", b"/Kids", b"/Count", b"/MediaBox", b"/CropBox", b"/Rotate", b"/Resources",
         b"/Length", b"/Size", b"/Prev", b"/W", b"/Index", b"/First", b"/N", b"/Filter",
         b"/DecodeParms", b"/AcroForm", b"/Fields", b"/Annots", b"/ByteRange", b"/Contents",
         b"/Type", b"/Root", b"/Encrypt", b"/XRefStm", b"/Perms", b"/DocMDP"]
_FRAGMENTS = [b"[" * 300 + b"]" * 300, b"<<" * 200 + b">>" * 200, b"1 0 R", b"2 0 R",
              b"/Parent 3 0 R", b"/Kids [2 0 R 2 0 R]", b"/Count 2147483647",
              b"/MediaBox [0 0 1e9 -1e9]", b"/Filter /FlateDecode", b"/Length 99999999",
              b"/W [9 9 9]", b"/Index [0 1000000]", b"/Encrypt << /Filter /Standard /V 5 >>",
              b"stream\n", b"endstream", b"endobj", b"xref\n0 1\n", b"%%EOF", b"\x00" * 64,
              b"(" + b"\\" * 100, b"<" + b"f" * 1000, b"/AcroForm << /Fields [3 0 R] >>",
              b"/Rotate -270", b"/Annots [3 0 R]", b"/Resources 3 0 R"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few structure-aware edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        rng.choice(_MUTATIONS)(out, rng)
    return bytes(out)


def _replace_match(pattern: re.Pattern[bytes], choices: Callable[[random.Random], bytes]
                   ) -> Callable[[bytearray, random.Random], None]:
    def apply(out: bytearray, rng: random.Random) -> None:
        matches = list(pattern.finditer(out))
        if matches:
            match = rng.choice(matches)
            out[match.start():match.end()] = choices(rng)
    return apply


def _flip(out: bytearray, rng: random.Random) -> None:
    if out:
        out[rng.randrange(len(out))] = rng.randrange(256)


def _insert(out: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(out) + 1)
    out[at:at] = b" " + rng.choice(_FRAGMENTS) + b" "


def _cut(out: bytearray, rng: random.Random) -> None:
    if len(out) > 16:
        start = rng.randrange(len(out))
        del out[start:start + rng.randint(1, 64)]


def _repeat(out: bytearray, rng: random.Random) -> None:
    if len(out) > 16:
        start = rng.randrange(len(out) - 8)
        piece = out[start:start + rng.randint(1, 256)]
        out[start:start] = piece * rng.randint(1, 50)


def _truncate(out: bytearray, rng: random.Random) -> None:
    if len(out) > 16:
        del out[rng.randrange(8, len(out)):]


_MUTATIONS: list[Callable[[bytearray, random.Random], None]] = [
    _flip, _insert, _cut, _repeat, _truncate,
    _replace_match(_NUMBER, lambda rng: rng.choice(_EXTREMES)),
    _replace_match(_NAME, lambda rng: rng.choice(_KEYS)),
    _replace_match(_REF, lambda rng: b"%d 0 R" % rng.randint(0, 12)),
]


def seeds() -> dict[str, bytes]:
    made = {name: make() for name, make in CASES.items()}
    return {name: data for name, data in made.items() if len(data) <= _SEED_LIMIT}


def run_in_process(seconds: float, out: Path, rng: random.Random, cpu: float, rss: float) -> int:
    from tests.fuzz.harness import Runner, prepare_token

    token = prepare_token(Path(tempfile.mkdtemp(prefix="pdffuzz-token-")))
    runner = Runner(token, ["seal-visible", "seal-invisible", "verify", "receipt"],
                    timeout=max(cpu * 3, 30))
    pool = seeds()
    names = sorted(pool)
    deadline, count = time.monotonic() + seconds, 0
    outcomes: Counter[str] = Counter()
    try:
        while time.monotonic() < deadline:
            name = rng.choice(names)
            document = mutate(pool[name], rng)
            outcome = runner.run(document)
            count += 1
            outcomes.update(f"{target} {_kind(result)}"
                            for target, result in outcome.results.items())
            problem = outcome.bad(cpu, rss)
            if problem:
                _record(out, name, document, problem, outcome.__dict__)
            if count % 200 == 0:
                runner.stop()  # peak RSS only grows: a fresh child keeps it measurable
    finally:
        runner.stop()
    print("outcomes:", dict(sorted(outcomes.items())), flush=True)
    return count


def _kind(result: str) -> str:
    """"sealed", "ok", "4xx 422 bad-document", "EXC", "INVALID"."""
    return " ".join(result.split(":")[0].split()[:3]) if result.startswith("4xx") \
        else result.split()[0].rstrip(":")


def _record(out: Path, seed: str, document: bytes, problem: str, details: object) -> None:
    digest = f"{seed}-{abs(hash(document)) % 10**10}"
    (out / f"{digest}.pdf").write_bytes(document)
    (out / f"{digest}.json").write_text(json.dumps({"seed": seed, "problem": problem,
                                                    "details": details}, indent=1))
    print(f"FINDING {digest}: {problem}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--live", action="store_true", help="fuzz a gateway process")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cpu", type=float, default=10.0, help="CPU seconds per input")
    parser.add_argument("--rss", type=float, default=300.0, help="peak RSS growth, MB")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pdffuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}, findings in {out}", flush=True)
    if args.live:
        from tests.fuzz.live import run_live
        count = run_live(args.seconds, out, rng, seeds(), mutate, _record)
    else:
        count = run_in_process(args.seconds, out, rng, args.cpu, args.rss)
    print(f"{count} inputs in {args.seconds:g} s", flush=True)


if __name__ == "__main__":
    main()
