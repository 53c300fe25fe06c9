"""The demo report's files are readable by others (a web server, a colleague): written with the
library's one atomic write, so 0666 & ~umask like any ordinary file — not mkstemp's 0600."""

import os
import stat

from fisherkit.report import tour


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_report_writer_gives_ordinary_permissions(tmp_path):
    path = tmp_path / "index.html"
    tour._atomic_write(path, b"<html></html>")
    assert path.read_bytes() == b"<html></html>"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]  # no temp file left


def test_every_file_of_the_quick_report_is_readable_by_others(quick_report):
    rc, out, _, _ = quick_report
    assert rc == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask() for p in files), \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
