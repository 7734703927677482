"""case_table.csv: written by the conversion, read (checked) by every later step."""

from __future__ import annotations

import pandas as pd
import pytest

from pancreas_mtl.data.case_table import (
    CASE_TABLE_COLUMNS,
    case_counts,
    case_subtypes,
    read_case_table,
    split_cases,
    write_case_table,
)
from pancreas_mtl.errors import UserInputError

ROWS = [
    {
        "case_id": "quiz_0_001",
        "split": "train",
        "subtype": "0",
        "image": "imagesTr/quiz_0_001_0000.nii.gz",
        "mask": "labelsTr/quiz_0_001.nii.gz",
    },
    {
        "case_id": "quiz_2_002",
        "split": "validation",
        "subtype": "2",
        "image": "imagesTr/quiz_2_002_0000.nii.gz",
        "mask": "labelsTr/quiz_2_002.nii.gz",
    },
    {"case_id": "quiz_003", "split": "test", "subtype": "", "image": "imagesTs/quiz_003_0000.nii.gz", "mask": ""},
]


def test_read_case_table(tmp_path):
    path = tmp_path / "case_table.csv"
    path.write_text(
        "case_id,split,subtype,image,mask\n"
        "quiz_0_001,train,0,imagesTr/quiz_0_001_0000.nii.gz,labelsTr/quiz_0_001.nii.gz\n"
        "quiz_2_002,validation,2,imagesTr/quiz_2_002_0000.nii.gz,labelsTr/quiz_2_002.nii.gz\n"
        "quiz_003,test,,imagesTs/quiz_003_0000.nii.gz,\n"
    )
    df = read_case_table(path)
    assert str(df["subtype"].dtype) == "Int64"
    assert df["subtype"].iloc[1] == 2 and pd.isna(df["subtype"].iloc[2])
    assert df["mask"].iloc[1] == "labelsTr/quiz_2_002.nii.gz"


def test_write_then_read_round_trip(tmp_path):
    path = write_case_table(tmp_path / "case_table.csv", ROWS)
    assert path.read_text().splitlines()[0] == ",".join(CASE_TABLE_COLUMNS)
    assert path.read_text().splitlines()[3] == "quiz_003,test,,imagesTs/quiz_003_0000.nii.gz,"
    assert read_case_table(path)["case_id"].tolist() == ["quiz_0_001", "quiz_2_002", "quiz_003"]
    assert case_subtypes(path) == {"quiz_0_001": 0, "quiz_2_002": 2}
    assert split_cases(path, "validation")["case_id"].tolist() == ["quiz_2_002"]


def test_missing_file_and_missing_columns_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="case table not found"):
        read_case_table(tmp_path / "nope.csv")
    path = tmp_path / "case_table.csv"
    path.write_text("case_id,split,image\nquiz_0_001,train,a\n")
    with pytest.raises(UserInputError, match=r"missing column\(s\) subtype, mask"):
        read_case_table(path)


def test_case_counts_per_split_and_subtype_name_plain_cases(tmp_path):
    rows = [
        {"case_id": case, "split": split, "subtype": subtype, "image": f"imagesTr/{case}_0000.nii.gz", "mask": ""}
        for case, split, subtype in [
            ("quiz_2_001", "train", "2"),
            ("quiz_2_002", "train", "2"),
            ("quiz_0_003", "train", "0"),
            ("liver_01", "validation", ""),  # a plain layout's case: no subtype
        ]
    ]
    path = write_case_table(tmp_path / "case_table.csv", rows)
    assert case_counts(path) == {"train": {"0": 1, "2": 2}, "validation": {"plain": 1}}
