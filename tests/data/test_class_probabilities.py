"""class_probabilities.csv: written next to the predicted masks, read (checked) by metrics and submission."""

from __future__ import annotations

import numpy as np
import pytest

from pancreas_mtl.data.class_probabilities import (
    CLASS_PROBABILITIES_COLUMNS,
    class_probabilities_path,
    read_class_probabilities,
    write_class_probabilities,
)
from pancreas_mtl.errors import UserInputError


def test_read_class_probabilities(tmp_path):
    path = tmp_path / "class_probabilities.csv"
    path.write_text(
        "case_id,prob_0,prob_1,prob_2,predicted_subtype\n"
        "quiz_0_001,0.7,0.2,0.1,0\n"
        "quiz_1_002,0.1,0.3,0.6,2\n"
        "quiz_2_003,0.4,0.4,0.2,1\n"
    )  # a tie: stated 1 accepted, argmax (first) = 0
    df = read_class_probabilities(path)
    assert df["case_id"].tolist() == ["quiz_0_001", "quiz_1_002", "quiz_2_003"]
    assert df["predicted_subtype"].tolist() == [0, 2, 0]
    path.write_text("case_id,prob_0,prob_1,prob_2,predicted_subtype\nquiz_0_001,0.7,0.2,0.1,1\n")
    with pytest.raises(UserInputError, match="not the argmax"):
        read_class_probabilities(path)
    path.write_text("case_id,prob_0,prob_1,prob_2,predicted_subtype\nquiz_0_001,0.7,0.7,0.1,0\n")
    with pytest.raises(UserInputError, match="sum to"):
        read_class_probabilities(path)
    path.write_text("case_id,prob_0,prob_1,predicted_subtype\nquiz_0_001,0.7,0.3,0\n")
    with pytest.raises(UserInputError, match="prob_2"):
        read_class_probabilities(path)


def test_write_then_read_the_folder(tmp_path):
    path = write_class_probabilities(
        tmp_path, {"quiz_2": np.array([0.1, 0.2, 0.7]), "quiz_1": np.array([0.5, 0.3, 0.2])}
    )
    assert path == class_probabilities_path(tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(CLASS_PROBABILITIES_COLUMNS)
    table = read_class_probabilities(tmp_path)  # the folder stands for its CSV
    assert table["case_id"].tolist() == ["quiz_1", "quiz_2"]
    assert table["predicted_subtype"].tolist() == [0, 2]


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="class probabilities file not found"):
        read_class_probabilities(tmp_path)
