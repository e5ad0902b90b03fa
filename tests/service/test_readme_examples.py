"""README.md's service examples (curl -F, and JSON through a file) run as written and give the answers shown."""

from __future__ import annotations

import shutil

import pytest

from tests.readme_examples import examples, run_examples


def test_readme_examples_use_files_not_base64_arguments():
    code = "\n".join(c for c, _ in examples())
    assert len(examples()) >= 4 and "-F images=@" in code
    assert "$(base64" not in code  # a photo's base64 as an argument: "Argument list too long" over ~96 KB


def test_readme_examples_give_the_readme_answers(live_url):
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    assert run_examples(live_url) == []
