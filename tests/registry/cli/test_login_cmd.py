"""kubeport signup / login's local parts: how secrets are read (terminal or stdin), the QR code, the help."""

from __future__ import annotations

import io

import pytest

from registry.cli import kubeport_main
from registry.cli.login_cmd import Secrets, _new_password, print_qr, read_stdin_lines
from registry.core.errors import BadParameter


class Bytes(io.StringIO):
    """A text stream whose ``buffer`` holds raw bytes (what sys.stdin is)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.buffer = io.BytesIO(raw)  # type: ignore[misc]


def test_stdin_lines_keep_spaces_and_drop_line_endings() -> None:
    assert read_stdin_lines(Bytes(b" p\xc3\xa4ss word \r\n123456\r\n")) == [" päss word ", "123456", ""]
    assert read_stdin_lines(io.StringIO("pw\n")) == ["pw", ""]


def test_stdin_that_is_not_utf8_or_is_huge_is_refused() -> None:
    with pytest.raises(BadParameter, match="not UTF-8"):
        read_stdin_lines(Bytes(b"\xff\xfe\n"))
    with pytest.raises(BadParameter, match="larger than"):
        read_stdin_lines(Bytes(b"x" * 20_000))


def test_a_missing_code_line_is_named() -> None:
    secrets = Secrets(from_stdin=True, stdin=io.StringIO("only the password"))
    assert secrets.next("p", "password") == "only the password"
    with pytest.raises(BadParameter, match="no line for the one-time code"):
        secrets.next("c", "one-time code")


def test_interactive_new_password_asks_again_on_short_or_mismatched_input() -> None:
    good = "long enough password"
    answers = iter(["short", good, "typo in the repeat", good, good])
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    assert _new_password(Secrets(from_stdin=False, ask=ask), 12) == "long enough password"
    assert len(prompts) == 5
    never = Secrets(from_stdin=False, ask=lambda prompt: "short")
    with pytest.raises(BadParameter, match="no password set"):
        _new_password(never, 12)


def test_stdin_new_password_too_short_fails_at_once() -> None:
    with pytest.raises(BadParameter, match="too short"):
        _new_password(Secrets(from_stdin=True, stdin=io.StringIO("short\n123456\n")), 12)


def test_the_qr_code_is_printed_in_the_terminal() -> None:
    out = io.StringIO()
    print_qr("otpauth://totp/kubeport%20c:alice?secret=JBSWY3DPEHPK3PXP&issuer=kubeport%20c", out)
    lines = out.getvalue().splitlines()
    assert len(lines) > 10 and any("█" in line or "▀" in line or "▄" in line for line in lines)


def test_help_documents_password_stdin_and_the_code_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        kubeport_main.build_parser().parse_args(["login", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--password-stdin" in text and "the one-time code on the second line" in text
    assert "--auth NAME" in text and "--ttl" in text


def test_second_factor_is_a_start_flag_defaulting_to_otp(capsys: pytest.CaptureFixture[str]) -> None:
    parser = kubeport_main.build_parser()
    assert parser.parse_args(["start"]).second_factor == "otp"
    assert parser.parse_args(["registry", "start", "--second-factor=off"]).second_factor == "off"
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["start", "--second-factor=sms"])
    assert refused.value.code == 2 and "--second-factor" in capsys.readouterr().err
