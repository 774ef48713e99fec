"""Measure the two noises of one train.py on this machine: run-to-run (training) noise and paired
eval-sampling noise, with the per-row loss file in the loop.

    python benchmarks/measure_noise.py [--profile cpu] [--data-dir data/cpu] [--runs 4] [--seeds 1,2,3,4]

Runs train.py `--runs` times as bare processes (sandbox.bare: train, then the evaluator), one seed
each, then scores each run's model again here to get its per-row losses (evaluator.rowloss), writes
rowloss.bin, reads it back as the host would (checked against that run's score.json), and prints:
each run's val_bpb, the run-to-run standard deviation (controller.noise.pooled_noise), the paired
eval-sampling SE of the difference for every pair of runs (controller.noise.paired_eval_se), and the
keep rule's decision for each run against the others as if it were a no-op proposal.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from controller.noise import decide, paired_eval_se, pooled_noise  # noqa: E402
from evaluator import layout  # noqa: E402
from evaluator.artifact import load_artifact  # noqa: E402
from evaluator.dataloader import eval_data  # noqa: E402
from evaluator.profiles import get_profile  # noqa: E402
from evaluator.records import ScoreRecord  # noqa: E402
from evaluator.rowloss import ROWLOSS_FILE, RowLosses, profile_rows, read_rowloss, row_totals, write_rowloss  # noqa: E402
from evaluator.score import checked_forward, eval_tensors, token_byte_table  # noqa: E402
from evaluator.tokenizer import load_token_bytes  # noqa: E402
from sandbox.bare import run_bare  # noqa: E402
from sandbox.result import ExperimentSpec  # noqa: E402


def rows_of(artifact: Path, data_dir: Path, profile_name: str) -> RowLosses:
    profile = get_profile(profile_name)
    raw = eval_data(data_dir, profile)
    data = eval_tensors(raw.inputs, raw.targets, raw.spare, profile)
    table = token_byte_table(load_token_bytes(data_dir), profile.vocab_size)
    model = load_artifact(artifact, profile.eval_batch_size, profile.seq_len)
    forward = checked_forward(model, "cpu", profile.eval_batch_size, profile.seq_len, profile.vocab_size)
    with torch.inference_mode():
        parts = [row_totals(forward(data.inputs[b]), data.targets[b], table) for b in range(data.inputs.shape[0])]
    return RowLosses.concat(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: data/<profile>")
    parser.add_argument("--train", type=Path, default=REPO / "programs/default/train.py")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 1..runs)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: a temp dir")
    args = parser.parse_args(argv)
    data_dir = (args.data_dir or REPO / "data" / args.profile).resolve()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(1, args.runs + 1))
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="overnight-noise-"))
    profile = get_profile(args.profile)

    scores: list[float] = []
    rows: list[RowLosses] = []
    for seed in seeds:
        run_dir = runs_dir / f"seed-{seed}"
        spec = ExperimentSpec(
            run_id=f"noise-{seed}",
            train_py=args.train,
            run_dir=run_dir,
            profile=args.profile,
            data_dir=data_dir,
            seed=seed,
        )
        result = run_bare(spec)
        if result.status != "ok" or result.val_bpb is None:
            print(f"seed {seed}: {result.status} ({result.reason}); logs in {run_dir}", file=sys.stderr)
            return 1
        written = rows_of(run_dir / "out" / layout.ARTIFACT_NAME, data_dir, args.profile)
        write_rowloss(written, run_dir / ROWLOSS_FILE)
        score = ScoreRecord.model_validate_json((run_dir / layout.SCORE_NAME).read_text())
        back = read_rowloss(run_dir / ROWLOSS_FILE, profile_rows(profile), score)
        scores.append(result.val_bpb)
        rows.append(back)
        print(
            f"seed {seed}: val_bpb {result.val_bpb:.6f}  rows {back.rows}  row-sum bpb {back.bpb:.6f}  "
            f"train {result.train_seconds:.1f}s",
            flush=True,
        )

    noise = pooled_noise({"train.py": scores})
    print(f"runs: {len(scores)}")
    print(f"mean_val_bpb: {statistics.fmean(scores):.6f}")
    print(f"sigma_train: {noise.sigma:.6f}" if noise.sigma is not None else "sigma_train: -")
    pair_se = []
    for i, j in itertools.combinations(range(len(rows)), 2):
        p = paired_eval_se([rows[i]], [rows[j]])
        pair_se.append(p.se)
        print(f"pair {seeds[i]}-{seeds[j]}: delta {p.delta:+.6f}  se_eval {p.se:.6f}")
    if pair_se:
        print(f"se_eval_median: {statistics.median(pair_se):.6f}")
    for i in range(len(scores)):
        rest = [scores[k] for k in range(len(scores)) if k != i]
        d = decide(
            [scores[i]],
            rest,
            pooled_noise({"rest": rest}),
            se_eval=paired_eval_se([rows[i]], [rows[k] for k in range(len(rows)) if k != i]).se,
        )
        print(f"as a no-op proposal, seed {seeds[i]}: {d.verdict}: {d.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
