"""The CLI shell: every command takes --threads (applied before it runs); errors stay one line."""

import pytest
import torch

from mwmae.cli import build_parser, main


def test_every_command_has_threads():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"pretrain", "finetune", "embed", "evaluate", "analyze", "demo"} <= set(commands)
    for name, sub in commands.items():
        assert "--threads" in sub._option_string_actions, name


def test_threads_is_applied_before_the_command(monkeypatch):
    seen = {}
    before = torch.get_num_threads()

    def fake(args):
        seen["threads"] = torch.get_num_threads()
        return 0

    parser_builder = build_parser

    def patched():
        parser = parser_builder()
        parser._subparsers._group_actions[0].choices["evaluate"].set_defaults(func=fake)
        return parser

    monkeypatch.setattr("mwmae.cli.build_parser", patched)
    try:
        assert main(["evaluate", "--out", "x", "--threads", "1"]) == 0
        assert seen["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_negative_threads_is_a_one_line_error(capsys):
    assert main(["evaluate", "--out", "x", "--threads", "-2"]) == 2
    err = capsys.readouterr().err
    assert "mwmae evaluate: error: --threads: expected a positive number" in err
    with pytest.raises(SystemExit):
        main(["evaluate", "--threads", "two"])


def test_unknown_words_are_the_commands_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["make-data", "out", "--bogus"])
    assert exc.value.code == 2
    assert "mwmae make-data: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_expected_builtin_errors_are_one_line(tmp_path, capsys):
    # prepare-shards reports the data library's FileNotFoundError / ValueError in one line.
    assert main(["prepare-shards", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwmae prepare-shards: error: ") and err.count("\n") == 1
