from pathlib import Path

import pytest

from corpus.licenses import detect_repo, detect_text, is_permissive

ROOT = Path(__file__).resolve().parents[2]

TEXTS = {
    "MIT": "Permission is hereby granted, free of charge, to any person obtaining a copy of this software",
    "Apache-2.0": "Apache License\n   Version 2.0, January 2004\n http://www.apache.org/licenses/",
    "BSD-3-Clause": "Redistributions in binary form must reproduce the above copyright notice.\n"
                    "3. Neither the name of the copyright holder nor the names of its contributors may be used",
    "BSD-2-Clause": "1. Redistributions of source code must retain ...\n2. Redistributions in binary form must reproduce",
    "GPL-3.0": "GNU GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007",
    "GPL-2.0": "GNU GENERAL PUBLIC LICENSE\n Version 2, June 1991",
    "LGPL-2.1": "GNU LESSER GENERAL PUBLIC LICENSE\n Version 2.1, February 1999",
    "LGPL-3.0": "GNU LESSER GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007",
    "ISC": "Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee",
    "MPL-2.0": "Mozilla Public License Version 2.0\n==================================",
    "SHL-0.51": "Solderpad Hardware License, Version 0.51 (the \"License\"); you may not use this file",
    "CERN-OHL-S-2.0": "CERN Open Hardware Licence Version 2 - Strongly Reciprocal",
    "CERN-OHL-P-2.0": "CERN Open Hardware Licence Version 2 - Permissive",
    "Unlicense": "This is free and unencumbered software released into the public domain.",
    "NOASSERTION": "All rights reserved. Do not copy.",
}


@pytest.mark.parametrize("spdx", sorted(TEXTS))
def test_detect_text(spdx: str) -> None:
    assert detect_text(TEXTS[spdx]) == spdx


def test_permissive() -> None:
    assert is_permissive("MIT") and is_permissive("SHL-0.51") and is_permissive("Apache-2.0")
    assert not is_permissive("GPL-3.0") and not is_permissive("NOASSERTION") and not is_permissive(None)


def test_detect_repo(tmp_path: Path) -> None:
    assert detect_repo(tmp_path) == "NOASSERTION"
    (tmp_path / "COPYING.txt").write_text(TEXTS["GPL-2.0"])
    assert detect_repo(tmp_path) == "GPL-2.0"
    outside = tmp_path.parent / "outside_license"
    outside.write_text(TEXTS["MIT"])
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "LICENSE").symlink_to(outside)  # never followed
    assert detect_repo(repo) == "NOASSERTION"
    expected = {"tinycores": "MIT", "svperiph": "Apache-2.0", "dspkit": "BSD-3-Clause", "student_labs": "NOASSERTION"}
    assert {name: detect_repo(ROOT / "sample/repos" / name) for name in expected} == expected
