"""credsweeper's secret classifier (three bidirectional Keras LSTMs that tf2onnx unrolled into Loops) on the candidates
credsweeper itself finds, before and after onnxslim's optimize, quantize and compress (defaults), against onnxruntime's
dynamic quantization.

    pip install credsweeper==1.19.5          # the benchmark's own dependency: it finds the candidates and encodes them
    python benchmarks/secrets_lstm.py --json secrets.json

credsweeper's rules find candidate credentials in files and hand each to its model: the line, the variable name and
the value as one-hot characters (128, 64 and 64 steps) and 529 features. This script scans files written here with
credentials in the shapes services issue (random values) and look-alikes that are not (placeholders, environment
reads), and the `email`, `http` and `urllib` packages of the running Python's standard library (real code, whose
candidates are nearly all false), recording every candidate the model is asked about. The candidates are shuffled;
the first 64 calibrate, the rest are the held-out set no run sees before it is scored. The metric is the share of
credsweeper's decisions (probability above its "medium" threshold) that stay the same as the original model's, and
the largest change of a probability; latency is a batch of 16 candidates, interleaved, at one thread and two.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import string
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_latencies  # noqa: E402
from onnxslim.runtime import Runner  # noqa: E402

BATCH = 16
CALIBRATION = 64
ALPHANUMERIC = string.ascii_letters + string.digits
NAMES = ["password", "passwd", "api_key", "apikey", "secret", "token", "auth_token", "access_key", "db_password", "client_secret",
         "SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "github_token", "slack_token", "private_key", "pwd", "key", "credentials"]
PLACEHOLDERS = ["changeme", "<PASSWORD>", "${DB_PASSWORD}", "os.environ['TOKEN']", "None", "''", "xxxxxxxx", "your-api-key-here",
                "password", "12345", "example", "getpass()", "settings.SECRET_KEY", "*****", "TODO", "dummy", "test_token", "{{ secret }}"]
LINE_FORMS = {
    "py": '{name} = "{value}"', "yaml": "  {name}: {value}", "env": "{NAME}={value}", "json": '  "{name}": "{value}",',
    "properties": "app.{name}={value}", "js": "const {name} = '{value}';", "go": '\t{name} := "{value}"', "sh": 'export {NAME}="{value}"',
}


def _credential(rng: random.Random) -> str:
    def pick(chars: str, count: int) -> str:
        return "".join(rng.choice(chars) for _ in range(count))

    forms = [
        lambda: "AKIA" + pick(string.ascii_uppercase + string.digits, 16),
        lambda: "ghp_" + pick(ALPHANUMERIC, 36),
        lambda: pick(ALPHANUMERIC + "+/", 40),
        lambda: f"xoxb-{pick(string.digits, 12)}-{pick(string.digits, 12)}-{pick(ALPHANUMERIC, 24)}",
        lambda: pick(ALPHANUMERIC + "!@#$%^&*", rng.randrange(10, 20)),
        lambda: base64.b64encode(bytes(rng.randrange(256) for _ in range(24))).decode(),
        lambda: "sk_live_" + pick(ALPHANUMERIC, 24),
        lambda: pick("0123456789abcdef", 32),
        lambda: "eyJhbGciOiJIUzI1NiJ9." + pick(ALPHANUMERIC, 30) + "." + pick(ALPHANUMERIC + "-_", 43),
    ]
    return rng.choice(forms)()


def write_files(folder: Path, count: int = 60, seed: int = 7) -> None:
    """``count`` small config and source files, half their assignments credentials and half look-alikes."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        extension = rng.choice(sorted(LINE_FORMS))
        lines = []
        for _ in range(rng.randrange(8, 20)):
            name = rng.choice(NAMES)
            value = _credential(rng) if rng.random() < 0.5 else rng.choice(PLACEHOLDERS)
            lines.append(LINE_FORMS[extension].format(name=name, NAME=name.upper(), value=value))
        (folder / f"file{index}.{extension}").write_text("\n".join(lines) + "\n")


SCAN = r"""
import sys, numpy as np
from credsweeper.app import CredSweeper
from credsweeper.file_handler.files_provider import FilesProvider
from credsweeper.ml_model.ml_validator import MlValidator
rows = []
original = MlValidator._call_model
def recorded(self, line_input, variable_input, value_input, feature_input):
    rows.append((line_input, variable_input, value_input, feature_input))
    return original(self, line_input, variable_input, value_input, feature_input)
MlValidator._call_model = recorded
CredSweeper(ml_batch_size=BATCH, ml_threshold=0.0, pool_count=1).run(FilesProvider(sys.argv[2:]))
joined = [np.concatenate([r[k] for r in rows]) for k in range(4)]
np.savez_compressed(sys.argv[1], line_input=joined[0], variable_input=joined[1], value_input=joined[2], feature_input=joined[3])
""".replace("BATCH", str(BATCH))


def candidates(work: Path) -> dict[str, np.ndarray]:
    """Every candidate credsweeper's model scores in the written files and three standard-library packages."""
    files = work / "files"
    write_files(files)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = work / "candidates.npz"
    subprocess.run([sys.executable, "-c", SCAN, str(found), str(files), *(str(stdlib / p) for p in ("email", "http", "urllib"))], check=True,
                   stdout=subprocess.DEVNULL)
    with np.load(found) as data:
        return {name: data[name].astype(np.float32) for name in data.files}


def batches(rows: dict[str, np.ndarray], order: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{name: values[order[start:start + BATCH]] for name, values in rows.items()} for start in range(0, len(order) - BATCH + 1, BATCH)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model and thread count")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    from importlib.resources import files as package_files

    import credsweeper

    model_dir = Path(str(package_files(credsweeper))) / "ml_model"
    original = model_dir / "ml_model.onnx"
    threshold = json.loads((model_dir / "ml_config.json").read_text())["thresholds"]["medium"]
    work = Path(tempfile.mkdtemp(prefix="secrets-"))
    rows = candidates(work)
    order = np.random.default_rng(0).permutation(len(rows["feature_input"]))
    calibration, held_out = batches(rows, order[:CALIBRATION]), batches(rows, order[CALIBRATION:])
    calib_dir = work / "calib"
    calib_dir.mkdir()
    for index, batch in enumerate(calibration):
        np.savez(calib_dir / f"batch_{index:03d}.npz", **batch)
    models = {"original": original}
    for command, extra in (("optimize", []), ("quantize", ["--data", str(calib_dir)]), ("compress", ["--data", str(calib_dir)])):
        models[command] = work / f"{command}.onnx"
        subprocess.run([sys.executable, "-m", "onnxslim", command, str(original), "-o", str(models[command]), *extra], check=True,
                       stdout=subprocess.DEVNULL)
    from onnxruntime.quantization import quantize_dynamic

    models["onnxruntime dynamic"] = work / "dynamic.onnx"
    quantize_dynamic(str(original), str(models["onnxruntime dynamic"]))
    reference = np.concatenate([Runner(str(original), threads=None).run(b)[0].ravel() for b in held_out])
    results = []
    latency = {threads: median_latencies(list(models.values()), held_out[0], threads=threads, runs=args.runs) for threads in (1, 2)}
    for index, (label, path) in enumerate(models.items()):
        scores = np.concatenate([Runner(str(path), threads=None).run(b)[0].ravel() for b in held_out])
        row = {
            "model": label, "candidates": len(scores), "positives_original": int((reference > threshold).sum()),
            "decisions_kept": float(np.mean((scores > threshold) == (reference > threshold))),
            "largest_probability_change": float(np.abs(scores - reference).max()),
            "ms_1_thread": latency[1][index], "ms_2_threads": latency[2][index],
            "ratio_1_thread": latency[1][index] / latency[1][0], "ratio_2_threads": latency[2][index] / latency[2][0],
            "mb": path.stat().st_size / 1e6,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{len(rows['feature_input'])} candidates: {CALIBRATION} calibrate, {len(held_out) * BATCH} held out; threshold {threshold}")
    print("| model | decisions kept | largest probability change | ms at 1 thread (ratio) | ms at 2 threads (ratio) | MB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['decisions_kept']:.4f} | {r['largest_probability_change']:.4f} | {r['ms_1_thread']:.2f} ({r['ratio_1_thread']:.2f}x) | "
              f"{r['ms_2_threads']:.2f} ({r['ratio_2_threads']:.2f}x) | {r['mb']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
