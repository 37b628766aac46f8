"""`sidecar validate`: issues on stderr, a summary on stdout, exit 1 on errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sidecar.config import validate

SAMPLES = Path("/work/shared/samples/istio-bookinfo")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sidecar")
    validate.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_valid_config_exits_zero_with_summary(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(SAMPLES / "bookinfo-kube.yaml"), str(SAMPLES / "destination-rule-all.yaml")]
    code = run(["validate", *files, "--pod-name", "reviews-v2-1-2", "--pod-namespace", "default"])
    out, err = capsys.readouterr()
    assert code == 0
    # 8 service-port clusters and fixed ones, plus one per DestinationRule subset (10).
    assert out == "18 objects, 2 listeners, 18 clusters, 0 warnings\n"
    assert err == ""


def test_invalid_config_exits_one_listing_every_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  clusterIP: nope\n  ports: [{port: 0}]\n  colour: red\n"
    )
    code = run(["validate", str(bad)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == [
        f"{bad}:5: error: Service/default/web: spec.clusterIP: 'nope' is not an IP address",
        f"{bad}:6: error: Service/default/web: spec.ports[0].port: port 0 is not in 1..65535",
        f"{bad}:7: warning: Service/default/web: spec.colour: field not implemented; ignored",
    ]
    assert out == "invalid: 2 errors, 1 warnings\n"


def test_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["validate", str(tmp_path / "absent.yaml")])
    _, err = capsys.readouterr()
    assert code == 1
    assert f"{tmp_path / 'absent.yaml'}: error: cannot read:" in err
