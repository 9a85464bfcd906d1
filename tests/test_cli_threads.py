"""Every command takes --threads, and it sets torch's intra-op thread count."""

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
