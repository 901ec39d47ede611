"""`sketchtune export` refuses bad input with one line and exit code 2."""
from __future__ import annotations

import shutil

from helpers_export import run_cli


def _one_line_error(code: int, stdout: str, stderr: str, needle: str) -> None:
    assert code == 2, stderr
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:"), stderr
    assert needle in stderr, stderr


def test_missing_input(tmp_path, capsys):
    _one_line_error(*run_cli(capsys, "export", str(tmp_path / "nope"), "-o", str(tmp_path / "out")), "does not exist")


def test_corrupted_input(tiny_artifacts, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts[1].path, broken)
    data = bytearray((broken / "lut_adapter.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (broken / "lut_adapter.safetensors").write_bytes(bytes(data))
    _one_line_error(*run_cli(capsys, "export", str(broken), "-o", str(tmp_path / "out")), "checksum mismatch")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_existing_output_needs_overwrite(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["export", str(tiny_artifacts[0].path), "-f", "lut-only", "-o", str(out)]
    _one_line_error(*run_cli(capsys, *args), "--overwrite")
    assert (out / "keep.txt").is_file()
    code, stdout, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert stdout.strip() == str(out) and not (out / "keep.txt").exists()


def test_bad_format_and_wrong_stage(tiny_artifacts, tmp_path, capsys):
    _one_line_error(*run_cli(capsys, "export", str(tiny_artifacts[0].path), "-f", "gguf", "-o", str(tmp_path / "o")),
                    "export.format")
    code, _, err = run_cli(capsys, "export", str(tiny_artifacts[0].path), "-f", "lut-only", "-o", str(tmp_path / "a"))
    assert code == 0, err
    _one_line_error(*run_cli(capsys, "export", str(tmp_path / "a"), "-o", str(tmp_path / "b")), "expected sketch or finetune")


def test_lut_only_with_moved_or_changed_base(tiny_artifacts, tmp_path, capsys):
    """An adapter names its base by content hash: a different base is refused, not silently applied."""
    import json

    from sketchtune_cli.errors import UserError
    from sketchtune_cli.loading import base_sketch_of

    code, _, err = run_cli(capsys, "export", str(tiny_artifacts[1].path), "-f", "lut-only", "-o", str(tmp_path / "a"))
    assert code == 0, err
    config_file = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_sketch"]["content_hash"] = "0" * 64
    config_file.write_text(json.dumps(config))
    try:
        base_sketch_of(tmp_path / "a")
    except UserError as e:
        assert "was made for base sketch" in str(e)
    else:
        raise AssertionError("a changed base hash was accepted")
    _one_line_error(*run_cli(capsys, "export", str(tmp_path / "a"), "-o", str(tmp_path / "b")), "expected sketch")
