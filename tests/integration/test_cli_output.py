"""What the CLI prints: help as written, `assets -q`, `config`, plain lines when not a terminal."""

from pathlib import Path

from typer.testing import CliRunner

from hfedmoe.cli.app import app

ROOT = Path(__file__).resolve().parents[2]


def test_bench_help_keeps_brackets():
    result = CliRunner().invoke(app, ["bench", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "[quick]" in result.stdout


def test_assets_quiet_prints_only_missing():
    from hfedmoe.assets.table import assets_as_rows

    missing = [r["name"] for r in assets_as_rows() if not r["installed"]]
    result = CliRunner().invoke(app, ["assets", "-q"])
    assert result.exit_code == (1 if missing else 0)
    assert result.stdout.count("\n") == len(missing)


def test_config_lists_fields_and_show_resolves():
    result = CliRunner().invoke(app, ["config"])
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and lines[0].split() == ["field", "type", "default"]
    at = next(i for i, x in enumerate(lines) if x.startswith("data.min_group_size "))
    assert lines[at].split() == ["data.min_group_size", "int", "1"] and lines[at + 1].startswith("    natural splits:")
    assert max(len(x) for x in lines) <= 100
    result = CliRunner().invoke(app, ["config", "--show", str(ROOT / "configs" / "tiny.toml"), "--set", "train.lr=0.01"])
    assert result.exit_code == 0 and "lr = 0.01" in result.stdout and 'name = "tiny-moe"' in result.stdout


def test_plain_lines_when_not_a_terminal(tmp_path):
    """CliRunner output is not a terminal: no live display, one unwrapped line per client update."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "-c", str(ROOT / "configs" / "tiny.toml"), "-o", str(out),
                                      "--set", "federation.rounds=1", "--set", "data.max_examples=120"])
    assert result.exit_code in (0,), result.stderr
    client_lines = [x for x in result.stdout.splitlines() if x.startswith("round 1 client ")]
    assert len(client_lines) == 4 and all(" steps, loss " in x and x.endswith(" s") for x in client_lines)
    assert all(len(x) <= 200 for x in result.stdout.splitlines())
    header = result.stdout.splitlines()[0]
    assert "budgets [" in header  # the first line is not cut at 80 columns
    summary = (out / "summary.json").read_text()
    assert "final_test_macro_f1" in summary and "warnings" in summary
