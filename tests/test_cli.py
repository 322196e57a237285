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


@pytest.mark.parametrize("argv, named", [
    (["score", "{tmp}/clip.mp4", "--checkpoint", "{tmp}/model_fp32.pt", "--no-progress"], "--checkpoint {tmp}/model_fp32.pt does not exist"),
    (["evaluate", "--checkpoint", "{tmp}/model_fp32.pt"], "--checkpoint {tmp}/model_fp32.pt does not exist"),
    (["export", "--checkpoint", "{tmp}/model_fp32.pt", "--out", "{tmp}/ts.pt"], "--checkpoint {tmp}/model_fp32.pt does not exist"),
    (["ledger", "check", "{tmp}/no-run"], "{tmp}/no-run does not exist"),
    (["train", "--set", "optim.lr=-1"], "optim.lr must be > 0"),
])
def test_paths_and_configs_are_checked_before_torch_is_imported(tmp_path, argv, named):
    """Before: a missing checkpoint was reported as a missing model card (model_fp32.json) after the
    imports of torch and the model code; `ledger check` of a folder that does not exist said it had
    no ledger; train loaded its config after importing torch, DeepSpeed and Ray."""
    import subprocess
    import sys

    (tmp_path / "clip.mp4").write_bytes(b"x")
    code = ("import sys; from cli.app import main; sys.argv = ['dfdc'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *(a.format(tmp=tmp_path) for a in argv)], capture_output=True, text=True,
                          timeout=120)
    # Exit 2, a usage error, as click's own for an option it refuses (the missing checkpoint and
    # run folder exited 1 before).
    assert done.stdout.strip() == "exit 2 False", done.stdout + done.stderr[-2000:]
    assert named.format(tmp=tmp_path) in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound and closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv", [
    ["submit", "--dashboard", "http://127.0.0.1:{port}", "--", "train"],
    ["submit", "--address", "http://127.0.0.1:{port}", "--stop", "raysubmit_x"],
    ["spot", "watch", "--ray-address", "127.0.0.1:{port}"],
])
def test_an_unreachable_ray_cluster_is_one_line_naming_the_address_in_seconds(argv):
    """Before: submit printed a 118-line traceback (ConnectionError from Ray's job client); spot watch
    waited for Ray's GCS timeouts (~40 s an attempt, 30 attempts), printing warnings that named the
    node's IP instead of the address given."""
    import subprocess
    import sys
    from pathlib import Path

    port = _closed_port()
    done = subprocess.run([str(Path(sys.executable).parent / "dfdc"), *(a.format(port=port) for a in argv)],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "RAY_ADDRESS" in lines[0], lines


@pytest.mark.parametrize("argv", [
    ["train", "--set", "tracking.uri=http://127.0.0.1:{port}"],
    ["evaluate", "--checkpoint", "models:/detector/1", "--set", "tracking.uri=http://127.0.0.1:{port}"],
])
def test_an_unreachable_mlflow_server_is_one_line_naming_it_in_seconds(argv, tmp_path):
    """Before: MLflow's client retried an address where nothing listens for minutes (still waiting
    after 60 s, measured) and then ended in a traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    port = _closed_port()
    done = subprocess.run([str(Path(sys.executable).parent / "dfdc"), *(a.format(port=port) for a in argv)],
                          capture_output=True, text=True, timeout=60, env=os.environ | {"DFDC_HOME": str(tmp_path)})
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"no MLflow server answers at http://127.0.0.1:{port}" in lines[-1] and "MLFLOW_TRACKING_URI" in lines[-1], lines
    assert len(lines) == 1, lines


def test_train_names_a_dataset_that_is_not_there_in_one_line(tmp_path):
    """Before: a traceback ending in ManifestError (and so for a data.face_margin wider than the
    dataset's crops hold)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([str(Path(sys.executable).parent / "dfdc"), "train", "--set", f"data.dataset={tmp_path}/none",
                           "--set", f"ray.storage_path={tmp_path}/runs"], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"DFDC_HOME": str(tmp_path)})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip() == f"error: {tmp_path}/none/manifest.json does not exist: the dataset is not ingested (or its " \
                                  "ingest has not finished)", done.stderr


def test_reach_checks_the_address_form_and_a_listening_port():
    import socket

    from dfdc import reach

    reach.gcs("auto")  # Ray finds the cluster itself
    with pytest.raises(reach.Unreachable, match="is not HOST:PORT"):
        reach.gcs("head-node")
    with pytest.raises(reach.Unreachable, match="is not a URL"):
        reach.dashboard("http://:x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        reach.gcs(f"127.0.0.1:{port}")
        reach.gcs(f"ray://127.0.0.1:{port}")
        reach.dashboard(f"http://127.0.0.1:{port}")
    with pytest.raises(reach.Unreachable, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        reach.gcs(f"127.0.0.1:{port}")


def test_the_two_kinds_of_ray_address_have_their_own_names_and_rays_fallbacks(monkeypatch):
    """GCS addresses are --ray-address on every command that joins a cluster (RAY_ADDRESS); the job
    dashboard is submit's --dashboard (--address, as `ray job submit` names it, still works), read
    from RAY_API_SERVER_ADDRESS before RAY_ADDRESS as Ray's job client does. Before: submit and spot
    watch both said --address for different things, train/ingest/evaluate/score --ray-address, sweep none."""
    import typer

    commands = typer.main.get_command(app).commands
    joins = {name: cmd for name, cmd in [*commands.items(), ("spot watch", commands["spot"].commands["watch"])]
             if name in ("ingest", "train", "evaluate", "score", "sweep", "spot watch")}
    for name, cmd in joins.items():
        assert any("--ray-address" in p.opts for p in cmd.params), name
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.5:8265")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    printed = runner.invoke(app, ["submit", "--print", "--", "synth", "--out", "x"])
    assert printed.exit_code == 0 and "--address http://10.0.0.5:8265 " in printed.output, printed.output
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.6:8265")
    printed = runner.invoke(app, ["submit", "--print", "--", "synth", "--out", "x"])
    assert "--address http://10.0.0.6:8265 " in printed.output, printed.output


def _documented_command_lines() -> list[tuple[str, list[str]]]:
    """Every `dfdc ...` command line in README.md and docs/*.md (code blocks and inline code), as
    (where, words), continuation lines joined and environment assignments before it dropped."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).parent.parent
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")
        candidates = re.findall(r"`(dfdc [^`]+)`", text) + [line for line in text.splitlines() if re.match(r"\s*(\w+=\S+\s+)*dfdc \S", line)]
        for line in candidates:
            line = re.sub(r"^\s*(\w+=\S+\s+)*", "", line.split(" #")[0]).strip()
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            found.append((f"{doc.name}: {line}", words[1:]))
    return found


def _check_flags(words: list[str], where: str) -> None:
    import typer

    cmd = typer.main.get_command(app)
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        cmd, words = cmd.commands[words[0]], words[1:]
    if hasattr(cmd, "commands"):
        return  # `dfdc ledger`, `dfdc local ...` in prose: a group, no flags to check
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for i, w in enumerate(words):
        if w == "--":  # submit: the rest is another dfdc command
            _check_flags(words[i + 1:], where)
            return
        if w.startswith("--"):
            assert w.split("=")[0] in opts, f"{where}: {w.split('=')[0]} is not an option of this command ({sorted(opts)})"


def test_every_flag_in_the_readme_and_docs_exists():
    """Before: docs named flags the commands lacked (e.g. `plan --set`, `spot watch --ray-address`)."""
    lines = _documented_command_lines()
    assert len(lines) > 30
    for where, words in lines:
        _check_flags(words, where)


def test_help_imports_no_stage():
    """`dfdc --help` and every group's help import the commands' modules but no stage (no torch)."""
    import subprocess
    import sys

    code = ("import sys; from cli.app import main; sys.argv = ['dfdc'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules, 'ray' in sys.modules)")
    for argv in (["--help"], ["train", "--help"], ["spot", "--help"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().endswith("exit 0 False False"), (argv, done.stdout[-500:], done.stderr[-1000:])


def _commands():
    """Every `dfdc` command: (words, its click command)."""
    import typer

    def walk(cmd, words):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*words, name])
        else:
            yield words, cmd
    return list(walk(typer.main.get_command(app), []))


def test_help_shows_what_options_take_and_flows_its_paragraphs():
    """Before: every parameter showed its Python type (`<list[str]>`, `<bool>` on flags), `--videos`
    said its default was `synth.videos`, `submit`'s usage hid its `-- COMMAND`, and `ledger check`'s
    help kept its docstring's line breaks mid-sentence."""
    import inspect
    import re

    commands = _commands()
    assert len(commands) >= 17
    for words, cmd in commands:
        ctx = cmd.make_context("dfdc", [], resilient_parsing=True)
        for p in cmd.get_params(ctx):  # typer's own --help and the positional arguments too
            shown = p.display_type_rich(ctx) or ""
            assert not shown.startswith("<"), f"dfdc {' '.join(words)} {p.opts[0]}: shows the type label {shown}"
            assert not re.search(r"\(default: \w+\.\w+\)", p.help or ""), f"{p.opts[0]}: a key name for a default: {p.help}"
        # Rich help keeps a docstring's single line breaks after its first paragraph: one line each.
        for para in inspect.cleandoc(cmd.help or "").split("\n\n")[1:]:
            assert "\n" not in para, f"dfdc {' '.join(words)}: a hard-wrapped paragraph shows broken: {para[:80]!r}"
    synth = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "200"})
    assert "synth.videos, embedded 120" in synth.output, synth.output
    submit = runner.invoke(app, ["submit", "--help"], env={"COLUMNS": "200"})
    assert "submit [OPTIONS] -- COMMAND [ARGS]..." in submit.output, submit.output
