"""subtype_results.csv and the submission zip, on real files."""

import runpy
import zipfile
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from pancreas_mtl.data.class_probabilities import (
    class_probability_table,
    write_class_probabilities,
)
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.inference.predictor import roi_weighted_class_probabilities
from pancreas_mtl.inference.submission import make_submission_zip, write_subtype_results


def probabilities():
    return class_probability_table(
        {
            "quiz_037": np.array([0.7, 0.2, 0.1]),
            "quiz_005": np.array([0.1, 0.1, 0.8]),
            "quiz_120": np.array([0.2, 0.5, 0.3]),
        }
    )


def test_subtype_results_csv_is_exactly_the_handout_format(tmp_path):
    out = write_subtype_results(probabilities(), tmp_path / "subtype_results.csv")
    assert out.read_text() == "Names,Subtype\nquiz_005.nii.gz,2\nquiz_037.nii.gz,0\nquiz_120.nii.gz,1\n"


def test_zip_holds_the_csv_and_every_mask(tmp_path):
    csv = write_subtype_results(probabilities(), tmp_path / "subtype_results.csv")
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ["quiz_005", "quiz_037", "quiz_120"]:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), masks / f"{name}.nii.gz")
    archive = make_submission_zip(csv, masks, tmp_path / "submission.zip")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["quiz_005.nii.gz", "quiz_037.nii.gz", "quiz_120.nii.gz", "subtype_results.csv"]
        assert z.read("subtype_results.csv") == csv.read_bytes()


def test_zip_refuses_missing_masks_and_leaves_no_partial_file(tmp_path):
    csv = write_subtype_results(probabilities(), tmp_path / "subtype_results.csv")
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserInputError) as err:
        make_submission_zip(csv, tmp_path / "masks", tmp_path / "submission.zip")
    assert "quiz_037.nii.gz" in err.value.render()
    assert not list(tmp_path.glob("submission.zip*"))


def test_subtype_results_script_writes_the_csv_and_a_copy_of_the_probabilities(tmp_path):
    predictions = tmp_path / "predictions" / "test"
    predictions.mkdir(parents=True)
    source = write_class_probabilities(
        predictions, {"quiz_037": np.array([0.7, 0.2, 0.1]), "quiz_005": np.array([0.1, 0.1, 0.8])}
    )
    smk = SimpleNamespace(
        input=SimpleNamespace(predictions=str(predictions)),
        output=SimpleNamespace(
            subtypes=str(tmp_path / "subtype_results.csv"), probabilities=str(tmp_path / "subtype_probabilities.csv")
        ),
        log=[str(tmp_path / "subtype_results.log")],
    )
    script = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "subtype_results.py"
    runpy.run_path(str(script), init_globals={"snakemake": smk}, run_name="__main__")
    assert Path(smk.output.subtypes).read_text() == "Names,Subtype\nquiz_005.nii.gz,2\nquiz_037.nii.gz,0\n"
    assert Path(smk.output.probabilities).read_bytes() == source.read_bytes()


def test_tiles_vote_by_their_predicted_lesion_mass():
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]))
    # the second tile holds nearly all predicted lesion: its vote dominates
    probs = roi_weighted_class_probabilities(logits, torch.tensor([0.0, 500.0]))
    assert probs.argmax() == 2
    assert probs.sum().item() == pytest.approx(1.0)
    # no lesion anywhere: a plain average
    flat = roi_weighted_class_probabilities(logits, torch.tensor([0.0, 0.0]))
    assert torch.allclose(flat, torch.tensor([0.45, 0.1, 0.45]), atol=1e-6)
