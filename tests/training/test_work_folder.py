"""The work folder a fold trains in: its identity, where it resumes, publishing, the attempts' logs."""

import json
import logging
import os
from dataclasses import replace

import pytest
import torch

from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.training import work_folder
from pancreas_mtl.training.job import training_fold_folder
from pancreas_mtl.training.settings import stage_settings
from tests.training.test_trainers import schema_default_training


def checkpoint(path, epoch):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"current_epoch": epoch, "network_weights": {}}, path)
    return path


@pytest.fixture
def inputs(tmp_path):
    files = {"plans": tmp_path / "plans.json", "case_table": tmp_path / "case_table.csv"}
    files["plans"].write_text('{"plans": 1}')
    files["case_table"].write_text("case_id,subtype\nquiz_0_001,0\n")
    return files


def identity(inputs, **changes):
    settings = replace(
        stage_settings(schema_default_training(), "stage1", case_table=str(inputs["case_table"])), **changes
    )
    return work_folder.training_identity(
        settings, trainer="T", plans_name="P", configuration="C", fold=0, inputs={"plans": inputs["plans"]}
    )


def test_identity_ignores_run_only_settings_and_paths_but_not_contents(inputs, tmp_path):
    base = identity(inputs)
    assert identity(inputs, compile=True, final_validation=False) == base
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(inputs["case_table"].read_bytes())
    assert identity(inputs, case_table=str(moved)) == base  # the same file contents at another path
    assert work_folder.identity_differences(base, identity(inputs, num_epochs=7)) == ["settings.num_epochs"]
    inputs["plans"].write_text('{"plans": 2}')
    assert work_folder.identity_differences(base, identity(inputs)) == ["inputs.plans"]


def test_a_work_folder_of_another_training_is_kept_aside_and_the_same_one_adopted(inputs, tmp_path):
    fold = tmp_path / "training" / "model" / "fold_0"
    assert work_folder.prepare(fold, identity(inputs)) is None
    checkpoint(fold / work_folder.LATEST_CHECKPOINT, 3)
    assert work_folder.prepare(fold, identity(inputs)) is None  # a retry of the same training: resumed
    assert work_folder.resume_point(fold) == work_folder.ResumePoint(work_folder.LATEST_CHECKPOINT, 3)

    moved = work_folder.prepare(fold, identity(inputs, num_epochs=9))
    assert moved is not None and moved.name.startswith("fold_0.replaced-")
    assert (moved / work_folder.LATEST_CHECKPOINT).is_file()  # nothing deleted
    assert work_folder.resume_point(fold) == work_folder.ResumePoint(None, 0)
    assert json.loads((fold / work_folder.IDENTITY_FILE).read_text())["settings"]["num_epochs"] == 9


def test_resume_point_follows_nnunets_order(tmp_path):
    checkpoint(tmp_path / work_folder.NNUNET_BEST_CHECKPOINT, 2)
    assert work_folder.resume_point(tmp_path).describe() == "checkpoint_best.pth, at epoch 2"
    checkpoint(tmp_path / work_folder.LATEST_CHECKPOINT, 5)
    assert work_folder.resume_point(tmp_path).epoch == 5
    (tmp_path / work_folder.LATEST_CHECKPOINT).write_bytes(b"torn")
    assert "cannot be read" in work_folder.resume_point(tmp_path).describe()
    checkpoint(tmp_path / work_folder.FINAL_CHECKPOINT, 8)
    assert work_folder.resume_point(tmp_path).finished


def test_publish_links_each_checkpoint_into_place_and_refuses_a_missing_one(tmp_path):
    work, model = tmp_path / "training" / "fold_0", tmp_path / "trained" / "fold_0"
    final = checkpoint(work / "checkpoint_final.pth", 4)
    os.utime(final, (1, 1))  # written long before the job ended
    with pytest.raises(RuntimeError, match="has no checkpoint_best_combined.pth"):
        work_folder.publish(work, model, ["checkpoint_final.pth", "checkpoint_best_combined.pth"])
    assert not model.exists() or not any(model.iterdir())  # nothing half-published
    checkpoint(work / "checkpoint_best_combined.pth", 2)
    published = work_folder.publish(work, model, ["checkpoint_final.pth", "checkpoint_best_combined.pth"])
    assert [p.name for p in published] == ["checkpoint_final.pth", "checkpoint_best_combined.pth"]
    assert os.path.samefile(published[0], final) and published[0].stat().st_mtime > 1
    published[0].unlink()  # Snakemake deleting the output before a rerun leaves the work folder whole
    assert final.is_file()


def test_each_attempt_keeps_its_log_and_the_rule_log_gets_the_earlier_ones(tmp_path):
    fold, rule_log = tmp_path / "fold_0", tmp_path / "logs" / "train.log"
    rule_log.parent.mkdir()
    root = logging.getLogger()
    try:
        for expected in (1, 2):
            rule_log.write_text("")  # Snakemake removes the rule's log before each attempt
            number, attempt_log = work_folder.begin_attempt(fold, rule_log)
            assert number == expected
            logging.getLogger("pancreas_mtl").warning("line of attempt %d", number)
            root.handlers[-1].flush()
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler) and str(fold) in h.baseFilename]:
            root.removeHandler(handler)
            handler.close()
    assert "line of attempt 1" in (fold / "attempts" / "attempt_01.log").read_text()
    assert "line of attempt 2" in attempt_log.read_text() and "line of attempt 1" not in attempt_log.read_text()
    text = rule_log.read_text()
    assert "===== attempt 01 of this training" in text and "line of attempt 1" in text
    assert text.index("line of attempt 1") < text.index("===== attempt 2 =====")


def test_the_work_folder_mirrors_the_model_folder_under_the_training_root(tmp_path):
    folders = NnunetFolders.under(tmp_path / "nnunet")
    model_fold = folders.results / "Dataset501_X" / "T__P__C" / "fold_1"
    assert training_fold_folder(folders, model_fold) == folders.training / "Dataset501_X" / "T__P__C" / "fold_1"
