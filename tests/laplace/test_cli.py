"""``fisherkit laplace``: bad options end with one error line and exit code 2, before any training."""

import pytest

from fisherkit.cli import main


@pytest.mark.parametrize("args,match", [
    (["--methods", "map,nope"], "unknown method"),
    (["--models", "resnet"], "unknown model"),
    (["--seeds", "0"], "--seeds"),
    (["--tuning", "bayes"], "--tuning"),
    (["--members", "0"], "--members"),
    (["--link", "bridge"], "--link"),
    (["--prior-structure", "diagonal"], "--prior-structure"),
])
def test_bad_options(args, match, capsys):
    assert main(["laplace", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and match in err
