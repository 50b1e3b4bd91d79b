"""The seal of tests/conftest.py holds: no network in this process or in the ones it starts, no GPU,
no weights, no variables of the caller's; and the code, offline with no weights, says so in one line."""

import os
import subprocess
import sys
import urllib.request

import pytest
import torch

import common
import data
import evaluate


def test_a_connection_fails_here_and_is_logged(network_attempts):
    with pytest.raises(OSError, match="network access is disabled"):
        urllib.request.urlopen("https://example.com", timeout=5)
    assert network_attempts() == ["name lookup example.com"]
    import socket

    with socket.socket() as sock, pytest.raises(OSError, match="network access is disabled"):
        sock.connect(("93.184.215.14", 443))  # an address: no name lookup to refuse first
    assert network_attempts()[-1] == "connect ('93.184.215.14', 443)"


def test_a_connection_fails_in_a_subprocess_and_is_logged(network_attempts):
    code = "import urllib.request; urllib.request.urlopen('https://pypi.org', timeout=5)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 1 and "network access is disabled" in res.stderr
    assert network_attempts() == ["name lookup pypi.org"]


def test_the_machine_is_hidden():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
    assert not {"FID_WEIGHTS", "VGG_WEIGHTS", "RUNS", "NPROC", "SEEDS"} & set(os.environ)
    assert torch.hub.get_dir() == os.path.join(os.environ["TORCH_HOME"], "hub")
    assert os.environ["TORCH_HOME"].startswith(os.environ["GENSTUDY_CACHE"].rsplit("cache", 1)[0])
    assert str(common.CACHE_DIR) == os.environ["GENSTUDY_CACHE"]
    code = "import torch, os; print(torch.cuda.device_count(), os.environ['GENSTUDY_OFFLINE'])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "0 1\n"


def test_offline_without_weights_one_line_then_the_builtin_space(monkeypatch, capsys, network_attempts):
    """With downloads allowed but no network, --fid-features auto tries once, says so in one line and
    scores in the data's own feature space."""
    monkeypatch.delenv("GENSTUDY_OFFLINE")
    heldout = data.load_dataset("digits", 16, aug="none").split()[1]
    evaluator = evaluate.Evaluator("auto", heldout, "digits", 16, 50, "cpu")
    err = capsys.readouterr().err
    assert evaluator.features == "digits" and err.count("\n") == 1
    assert err.startswith("note: FID in the digits feature space: weights pt_inception-2015-12-05")
    assert "(download failed: network access is disabled" in err
    assert network_attempts() == ["name lookup github.com"]
    monkeypatch.setenv("GENSTUDY_OFFLINE", "1")  # asked not to try: no attempt, the same one line
    evaluate.Evaluator("auto", heldout, "digits", 16, 50, "cpu")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "download failed" not in err and len(network_attempts()) == 1
