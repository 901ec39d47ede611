"""Every bad input a hostile user can give fails the same way: one line on stderr, exit 2, no traceback,
and not one file created or changed (the whole workspace is hashed before and after).

The workspace holds a tiny model directory, a sketch artifact of it, eval data and a zoo of broken files;
each case is a command line run through the real entry point, in-process (fast)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

import helpers

BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
) + "model:\n  name: *i\n"
TINY_COMPRESS = ["--calib", "builtin", "-n", "2", "--seq-len", "16", "--device", "cpu", "--bits", "2", "-g", "2"]


def _sketch(directory: Path, model_dir: Path) -> Path:
    """A sketch artifact of the tiny model with random LUTs (a format fixture: nothing here runs it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sketchtune_cli.artifacts import write_artifact
    from sketchtune_cli.sketch import replace_with_sketches, save_sketch

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    replace_with_sketches(model, helpers.random_sketches(model, groups_per_row=2))
    with write_artifact(directory, "sketch", {"model": {"name": str(model_dir)}}) as w:
        save_sketch(model, tok, w.path)
    return directory


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "sketchtune.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    tiny = helpers.save_tiny_model(root / "tiny")
    sk = _sketch(root / "sk", tiny)
    (root / "rand.gguf").write_bytes(os.urandom(4096))
    (root / "randfile").write_bytes(os.urandom(4096))
    (root / "nocfg").mkdir()
    for name, text in {"badcfg": "{broken", "emptycfg": "{}"}.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    shutil.copytree(tiny, root / "trunc")
    weights = (root / "trunc" / "model.safetensors").read_bytes()
    (root / "trunc" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 500)
    (root / "binary.txt").write_bytes(b"\0\1\2text" * 500)
    (root / "empty.json").write_text("[]")
    (root / "broken.json").write_text('[{"instruction": "x", ')
    (root / "dict.json").write_text('{"instruction": "x"}')
    (root / "nofields.json").write_text(json.dumps([{"question": "x"}] * 4))
    # one malformed record (the preflight lists every malformed record, one line each)
    (root / "noinstruction.json").write_text(json.dumps([{"question": "x", "output": "y"}]))
    (root / "calib.csv").write_text("a,b\n")
    (root / "ft_latin1.json").write_bytes(
        json.dumps([{"instruction": "caf\u00e9", "output": "x"}] * 8, ensure_ascii=False).encode("latin-1"))
    (root / "bomb.yaml").write_text(BOMB)
    (root / "latin1.yaml").write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    (root / "tabs.yaml").write_text("model:\n\tname: x\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "hugevalue.yaml").write_text("compress:\n  bits: " + "x" * 1_000_000 + "\n")
    (root / "cfgdir.yaml").mkdir()
    for case, content in {"evgood": json.dumps([{"instruction": "1+1?", "answer": "2"}]), "evbroken": "[{broken", "evempty": "[]", "evdict": '{"a": 1}',
                          "evnoanswer": json.dumps([{"instruction": "x"}])}.items():
        (root / case / "gsm8k").mkdir(parents=True)
        (root / case / "gsm8k" / "test.json").write_text(content)
    (root / "evlatin1" / "gsm8k").mkdir(parents=True)
    (root / "evlatin1" / "gsm8k" / "test.json").write_bytes(
        json.dumps([{"instruction": "caf\u00e9", "answer": "1"}], ensure_ascii=False).encode("latin-1"))
    # damaged copies of the sketch
    shutil.copytree(sk, root / "sk_edited")
    _edit_manifest(root / "sk_edited", lambda d: d["results"].__setitem__("n", 1))
    shutil.copytree(sk, root / "sk_unsealed")
    _edit_manifest(root / "sk_unsealed", lambda d: d.pop("seal"))
    shutil.copytree(sk, root / "sk_stage")
    _edit_manifest(root / "sk_stage", lambda d: d.__setitem__("stage", "finetune"))
    shutil.copytree(sk, root / "sk_trunc")
    (root / "sk_trunc" / "model.safetensors").write_bytes(b"\x08" + b"\0" * 20)
    shutil.copytree(sk, root / "sk_notjson")
    (root / "sk_notjson" / "sketchtune.json").write_text("{")
    shutil.copytree(sk, root / "sk_newer")
    _edit_manifest(root / "sk_newer", lambda d: d.__setitem__("format", "sketchtune.sketch/99"))
    # outputs in the way: an existing one, an interrupted run, a live run, a run on another host
    (root / "exists").mkdir()
    (root / "exists" / "keep.txt").write_text("x")
    for name, holder in {"stale": None, "live": (os.getpid(), socket.gethostname()), "remote": (7, "gpu-node-9")}.items():
        (root / f"{name}.partial").mkdir()
        if holder:
            (root / f"{name}.partial" / "lock").write_text(json.dumps(
                {"pid": holder[0], "host": holder[1], "process_start": None, "started": "2026-01-01T00:00:00+00:00"}))
    return root


# (id, argv with {ws} for the workspace, a phrase the one line must contain)
CASES = [
    # configs
    ("yaml-anchor-bomb", ["config", "show", "--config", "{ws}/bomb.yaml"], "aliases"),
    ("yaml-anchor-bomb-run", ["run", "--dry-run", "--config", "{ws}/bomb.yaml"], "aliases"),
    ("yaml-not-utf8", ["config", "show", "--config", "{ws}/latin1.yaml"], "not UTF-8"),
    ("yaml-tabs", ["config", "show", "--config", "{ws}/tabs.yaml"], "not valid YAML"),
    ("yaml-not-mapping", ["config", "show", "--config", "{ws}/list.yaml"], "mapping"),
    ("yaml-is-directory", ["config", "show", "--config", "{ws}/cfgdir.yaml"], "is a directory"),
    ("yaml-missing", ["config", "show", "--config", "{ws}/nope.yaml"], "not found"),
    ("yaml-huge-wrong-value", ["config", "show", "--config", "{ws}/hugevalue.yaml"], "compress.bits"),
    ("override-unknown-key", ["config", "show", "compress.bitz=3"], "did you mean compress.bits"),
    ("override-bad-value", ["config", "show", "compress.bits=5"], "compress.bits"),
    ("override-deep-nesting", ["config", "show", "compress.bits=" + "[" * 5000], "compress.bits"),
    # models
    ("gguf-random-bytes", ["compress", "{ws}/rand.gguf", "-o", "{ws}/o", *TINY_COMPRESS], "not a GGUF file"),
    ("gguf-missing", ["compress", "{ws}/none.gguf", "-o", "{ws}/o", *TINY_COMPRESS], "does not exist"),
    ("model-random-file", ["compress", "{ws}/randfile", "-o", "{ws}/o", *TINY_COMPRESS], "is a file, not a model"),
    ("model-missing-path", ["compress", "{ws}/no/such/model", "-o", "{ws}/o", *TINY_COMPRESS], "does not exist"),
    ("model-dir-no-config", ["compress", "{ws}/nocfg", "-o", "{ws}/o", *TINY_COMPRESS], "no config.json"),
    ("model-broken-config", ["compress", "{ws}/badcfg", "-o", "{ws}/o", *TINY_COMPRESS], "config.json is not valid JSON"),
    ("model-config-no-type", ["compress", "{ws}/emptycfg", "-o", "{ws}/o", *TINY_COMPRESS], "no model_type"),
    ("model-truncated-weights", ["compress", "{ws}/trunc", "-o", "{ws}/o", *TINY_COMPRESS], "cannot be read"),
    ("seq-len-beyond-positions", ["compress", "{ws}/tiny", "-o", "{ws}/o", "--seq-len", "100000", "--calib",
                                  "builtin", "--device", "cpu"], "exceeds the model's 128 positions"),
    # calibration
    ("calib-not-utf8", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/latin1.txt"],
     "compress.calib_encoding"),
    ("calib-binary", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/binary.txt"],
     "looks binary"),
    ("calib-empty-list", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/empty.json"],
     "holds no text"),
    ("calib-malformed", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/broken.json"],
     "not valid JSON"),
    ("calib-no-fields", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/nofields.json"],
     "`text` fields"),
    ("calib-missing", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/none.txt"],
     "does not exist"),
    ("calib-wrong-suffix", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib", "{ws}/calib.csv"],
     "must end in"),
    ("calib-unknown-encoding", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "--calib",
                                "{ws}/latin1.txt", "compress.calib_encoding=klingon"], "not a known text encoding"),
    ("groups-do-not-divide", ["compress", "{ws}/tiny", "-o", "{ws}/o", *TINY_COMPRESS, "-g", "7"], "divide"),
    # outputs
    ("output-under-a-file", ["compress", "{ws}/tiny", "-o", "{ws}/randfile/o", *TINY_COMPRESS], "is a file"),
    ("output-unwritable", ["compress", "{ws}/tiny", "-o", "/proc/sketchtune-o", *TINY_COMPRESS], "cannot write"),
    ("output-exists", ["compress", "{ws}/tiny", "-o", "{ws}/exists", *TINY_COMPRESS], "--overwrite"),
    ("output-interrupted", ["compress", "{ws}/tiny", "-o", "{ws}/stale", *TINY_COMPRESS], "--resume"),
    ("output-being-written", ["compress", "{ws}/tiny", "-o", "{ws}/live", *TINY_COMPRESS, "--resume"],
     "being written by a running sketchtune"),
    ("output-locked-elsewhere", ["compress", "{ws}/tiny", "-o", "{ws}/remote", *TINY_COMPRESS, "--resume"],
     "host gpu-node-9"),
    ("eval-output-unwritable", ["eval", "{ws}/sk", "--tasks", "arc_easy", "-o", "/proc/sketchtune-o"], "cannot write"),
    ("export-output-unwritable", ["export", "{ws}/sk", "-f", "lut-only", "-o", "/proc/sketchtune-o"], "cannot write"),
    ("export-output-under-file", ["export", "{ws}/sk", "-f", "lut-only", "-o", "{ws}/randfile/x"], "is a file"),
    # fine-tuning data
    ("data-not-utf8", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/ft_latin1.json"], "data.encoding"),
    ("data-binary", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/binary.txt"], "looks binary"),
    ("data-empty-list", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/empty.json"], "no records"),
    ("data-malformed", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/broken.json"], "not valid JSON"),
    ("data-not-a-list", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/dict.json"], "instruction"),
    ("data-missing-fields", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/noinstruction.json"],
     "field 'instruction' is missing"),
    ("data-missing-file", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/none.json"], "does not exist"),
    ("data-unknown-encoding", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/ft_latin1.json",
                               "data.encoding=klingon"], "not a known text encoding"),
    ("data-is-a-directory", ["finetune", "--base", "{ws}/sk", "-o", "{ws}/o", "data.path={ws}/nocfg"], "is a directory"),
    ("finetune-output-unwritable", ["finetune", "--base", "{ws}/sk", "-o", "/proc/sketchtune-o", "data.path=demo"],
     "cannot write"),
    ("estimate-random-file", ["inspect", "--estimate", "{ws}/randfile"], "is a file, not a model"),
    ("base-not-an-artifact", ["finetune", "--base", "{ws}/tiny", "-o", "{ws}/o", "data.path=demo"], "not a sketchtune artifact"),
    # eval data
    ("eval-data-malformed", ["eval", "{ws}/sk", "--tasks", "gsm8k", "--data-dir", "{ws}/evbroken", "-o", "{ws}/o"],
     "not valid JSON"),
    ("eval-data-empty", ["eval", "{ws}/sk", "--tasks", "gsm8k", "--data-dir", "{ws}/evempty", "-o", "{ws}/o"],
     "empty list"),
    ("eval-data-not-list", ["eval", "{ws}/sk", "--tasks", "gsm8k", "--data-dir", "{ws}/evdict", "-o", "{ws}/o"],
     "JSON dict"),
    ("eval-data-no-answer", ["eval", "{ws}/sk", "--tasks", "gsm8k", "--data-dir", "{ws}/evnoanswer", "-o", "{ws}/o"],
     "answer"),
    ("eval-data-not-utf8", ["eval", "{ws}/sk", "--tasks", "gsm8k", "--data-dir", "{ws}/evlatin1", "-o", "{ws}/o"],
     "not valid utf-8"),
    ("eval-data-missing", ["eval", "{ws}/sk", "--tasks", "gsm8k", "--data-dir", "{ws}/nowhere", "-o", "{ws}/o"],
     "not found"),
    # damaged artifacts, through every reader
    *[(f"edited-manifest-{cmd[0]}", [*cmd], "field results.n") for cmd in (
        ["inspect", "{ws}/sk_edited"],
        ["finetune", "--base", "{ws}/sk_edited", "-o", "{ws}/o", "data.path=demo"],
        ["export", "{ws}/sk_edited", "-f", "lut-only", "-o", "{ws}/o"],
        ["eval", "{ws}/sk_edited", "--tasks", "gsm8k", "--data-dir", "{ws}/evgood", "-o", "{ws}/o"],
    )],
    ("edited-stage-field", ["inspect", "{ws}/sk_stage"], "field stage"),
    ("seal-removed", ["inspect", "{ws}/sk_unsealed"], "no valid seal"),
    ("manifest-not-json", ["inspect", "{ws}/sk_notjson"], "corrupt"),
    ("manifest-newer-format", ["inspect", "{ws}/sk_newer"], "upgrade sketchtune"),
    ("artifact-truncated-weights-inspect", ["inspect", "{ws}/sk_trunc"], "cannot be read"),
    ("artifact-truncated-weights-export", ["export", "{ws}/sk_trunc", "-f", "lut-only", "-o", "{ws}/o"],
     "checksum mismatch"),
    ("artifact-truncated-weights-finetune", ["finetune", "--base", "{ws}/sk_trunc", "-o", "{ws}/o", "data.path=demo"],
     "checksum mismatch"),
    ("inspect-missing", ["inspect", "{ws}/nowhere"], "does not exist"),
    ("inspect-plain-model", ["inspect", "{ws}/tiny"], "not a sketchtune artifact"),
]


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, needle", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(ws, argv, needle, capsys, monkeypatch):
    if any(a.startswith("/proc/") for a in argv) and not Path("/proc/self").exists():
        pytest.skip("needs /proc: a directory nobody can create entries in, even root")
    monkeypatch.chdir(ws)
    before = _tree(ws)
    code, out, err = helpers.run_cli(capsys, *[a.replace("{ws}", str(ws)) for a in argv])
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 600 and "Traceback" not in err and out == ""
    assert _tree(ws) == before


def test_anchor_bomb_fails_in_under_a_second(ws, capsys):
    start = time.perf_counter()
    code, _, err = helpers.run_cli(capsys, "config", "show", "--config", str(ws / "bomb.yaml"))
    assert time.perf_counter() - start < 1.0
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_declared_encoding_reads_the_file(ws):
    """The way out the refusal names works: the latin-1 text decodes as written, not mangled."""
    from sketchtune_cli.compress.calibration import file_texts

    assert file_texts(ws / "latin1.txt", "latin-1")[0].startswith("café au lait")


@pytest.mark.parametrize("raised, code, needle", [
    (OSError(30, "Read-only file system", "/mnt/ro/out.partial"), 2, "cannot use /mnt/ro/out.partial: Read-only"),
    (PermissionError(13, "Permission denied", "/data/x"), 2, "Permission denied"),
    (OSError(28, "No space left on device"), 2, "free space"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid"), 2,
     "byte 0xff at offset 2"),
    (ValueError("a bug"), 1, "ValueError: a bug"),  # not the user's doing: stays a bug report
])
def test_runtime_failures_the_user_caused_are_one_line_exit_2(raised, code, needle, capsys, monkeypatch):
    """The safety net in `main` for what no early check caught (a disk filling up mid-run, ...)."""
    import sketchtune_cli.inspect_cmd as inspect_cmd

    def fail(path):
        raise raised

    monkeypatch.setattr(inspect_cmd, "summarize", fail)
    got, out, err = helpers.run_cli(capsys, "inspect", "anything")
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and needle in lines[0], err
