import pytest
from typer.testing import CliRunner

from cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("command", [["synth"], ["ingest"], ["train"], ["manifest"], ["evaluate"], ["score"], ["export"], ["local", "up"], ["local", "down"], ["local", "status"], ["local", "env"]])
def test_every_command_explains_itself_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_bad_override_is_a_clear_error():
    result = runner.invoke(app, ["ingest", "--source", "x", "--dest", "y", "--set", "ingest.nope=1"])
    assert result.exit_code == 2
    assert "ingest.nope" in result.output


def test_missing_manifest_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["manifest", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest.json does not exist" in result.output


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    result = runner.invoke(app, ["ingest", "--source", str(tmp_path), "--dest", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "matches no single known layout" in result.output


def test_score_with_a_missing_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    result = runner.invoke(app, ["score", str(tmp_path / "clip.mp4"), "--checkpoint", str(tmp_path / "model_fp32.pt"), "--no-progress"])
    assert result.exit_code == 1
    assert "model_fp32.json does not exist" in result.output
