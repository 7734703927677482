"""The small CPU configuration derived from the planned 3d_fullres, resolved by nnU-Net's own PlansManager."""

import json
from copy import deepcopy

import pytest
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.nnunet.planning import add_configuration, derive_small_configuration, preprocessed_data_identifier
from tests import nnunet_plans

PARENT = nnunet_plans.configuration(
    data_identifier="nnUNetResEncUNetMPlans_3d_fullres",
    patch_size=[32, 64, 64],
    median_image_size=[32.0, 64.0, 64.0],
    spacing=[3.0, 0.75, 0.75],
    network_class_name="dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",
    arch_kwargs=nnunet_plans.arch_kwargs(
        n_stages=5,
        features_per_stage=[32, 64, 128, 256, 320],
        kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_blocks_per_stage=[1, 3, 4, 6, 6],
        n_conv_per_stage_decoder=[1, 1, 1, 1],
    ),
    batch_dice=False,
)


def plans_with(child: dict) -> dict:
    return nnunet_plans.plans(
        {"3d_fullres": deepcopy(PARENT), "3d_cpu_demo": child},
        dataset_name="Dataset501_PancreasQuiz",
        spacing=[3.0, 0.75, 0.75],
        shape=[32, 64, 64],
    )


SMALL = {"feature_divisor": 4, "max_blocks_per_stage": 1, "batch_size": 2}


def test_small_configuration_inherits_preprocessing_and_shrinks_the_network():
    child = derive_small_configuration(PARENT, feature_divisor=4, max_blocks_per_stage=2, batch_size=3, patch_size=None)
    assert child["inherits_from"] == "3d_fullres"
    assert "data_identifier" not in child  # reuses the parent's preprocessed data
    resolved = PlansManager(plans_with(child)).get_configuration("3d_cpu_demo")
    kwargs = resolved.network_arch_init_kwargs
    assert kwargs["features_per_stage"] == [8, 16, 32, 64, 80]
    assert kwargs["n_blocks_per_stage"] == [1, 2, 2, 2, 2]
    assert resolved.batch_size == 3
    assert resolved.patch_size == [32, 64, 64]
    assert resolved.data_identifier == PARENT["data_identifier"]
    assert resolved.spacing == PARENT["spacing"]
    assert PARENT["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320]  # untouched


def test_smaller_patch_must_fit_the_downsampling():
    child = derive_small_configuration(PARENT, **SMALL, patch_size=[16, 32, 32])
    assert child["patch_size"] == [16, 32, 32]
    with pytest.raises(UserInputError, match=r"axis 1 \(40\) must be a positive multiple of 16"):
        derive_small_configuration(PARENT, **SMALL, patch_size=[16, 40, 32])
    with pytest.raises(UserInputError, match="has 2 axes"):
        derive_small_configuration(PARENT, **SMALL, patch_size=[32, 32])


def test_add_configuration_keeps_the_planned_ones(tmp_path):
    plans_file = tmp_path / "plans.json"
    plans = plans_with({})
    del plans["configurations"]["3d_cpu_demo"]
    plans_file.write_text(json.dumps(plans))
    add_configuration(plans_file, "3d_cpu_demo", derive_small_configuration(PARENT, **SMALL, patch_size=None))
    written = json.loads(plans_file.read_text())
    assert written["configurations"]["3d_fullres"] == PARENT
    assert written["configurations"]["3d_cpu_demo"]["inherits_from"] == "3d_fullres"
    with pytest.raises(UserInputError, match="refusing to replace"):
        add_configuration(plans_file, "3d_fullres", {})


def test_dataset_id_is_read_back_from_the_folder_name():
    from pancreas_mtl.nnunet.environment import dataset_folder_name, dataset_id_of

    assert dataset_id_of(dataset_folder_name(7, "RealScale")) == 7
    assert dataset_id_of("Dataset501_PancreasQuiz") == 501
    with pytest.raises(ValueError, match="not an nnU-Net dataset name"):
        dataset_id_of("PancreasQuiz")


def test_several_gpus_train_a_configuration_with_a_batch_per_gpu():
    """Defect: nnU-Net splits the configuration's batch over the GPUs (batch 2 on 3 GPUs: its assertion). With
    several GPUs the workflow trains an inherited configuration whose batch is batch_size_per_gpu x GPUs."""
    from pancreas_mtl.nnunet.planning import multi_gpu_configuration, training_configuration_name

    assert training_configuration_name("3d_cpu_demo", 1) == "3d_cpu_demo"
    name = training_configuration_name("3d_cpu_demo", 3)
    plans = plans_with(derive_small_configuration(PARENT, **SMALL, patch_size=None))
    for per_gpu, batch in ((None, 6), (4, 12)):
        plans["configurations"][name] = multi_gpu_configuration("3d_cpu_demo", 2, 3, per_gpu)
        child = PlansManager(plans).get_configuration(name)
        assert child.batch_size == batch
        small = PlansManager(plans).get_configuration("3d_cpu_demo")
        assert child.network_arch_init_kwargs == small.network_arch_init_kwargs  # only the batch changes


def test_a_configuration_with_its_own_spacing_gets_its_own_data():
    child = derive_small_configuration(
        PARENT, **SMALL, patch_size=None, spacing=[6, 1.5, 1.5], data_identifier="nnUNetResEncUNetMPlans_3d_cpu_demo"
    )
    resolved = PlansManager(plans_with(child)).get_configuration("3d_cpu_demo")
    assert resolved.spacing == [6.0, 1.5, 1.5] and resolved.data_identifier == "nnUNetResEncUNetMPlans_3d_cpu_demo"
    shared = PlansManager(plans_with(derive_small_configuration(PARENT, **SMALL, patch_size=None)))
    assert shared.get_configuration("3d_cpu_demo").data_identifier == PARENT["data_identifier"]
    with pytest.raises(UserInputError, match=r"spacing \[6, 1.5\]: the configuration needs 3 positive values"):
        derive_small_configuration(PARENT, **SMALL, patch_size=None, spacing=[6, 1.5], data_identifier="x")


@pytest.mark.parametrize(
    "configuration, spacing, expected",
    [
        ("3d_cpu_demo", None, "nnUNetPlans_3d_fullres"),
        ("3d_fullres", [6, 1.5, 1.5], "nnUNetPlans_3d_fullres"),
        ("3d_cpu_demo", [6, 1.5, 1.5], "nnUNetResEncUNetMPlans_3d_cpu_demo"),
    ],
)
def test_the_training_data_is_the_configurations_own_only_with_a_spacing_of_its_own(configuration, spacing, expected):
    cpu = {"name": "3d_cpu_demo", "spacing": spacing}
    assert preprocessed_data_identifier("nnUNetResEncUNetMPlans", configuration, cpu) == expected


@pytest.mark.slow
def test_a_coarser_cpu_configuration_is_preprocessed_alone_under_its_own_data(quiz_builder, tmp_path):
    """Real nnU-Net on a small quiz folder: the CPU configuration that trains at its own spacing has its own
    preprocessed data at that spacing; 3d_fullres is planned, and nothing preprocesses data no model reads."""
    from pancreas_mtl.data.conversion import convert_quiz_to_nnunet
    from pancreas_mtl.nnunet.environment import NnunetFolders
    from pancreas_mtl.nnunet.planning import plan_dataset

    folders = NnunetFolders.under(tmp_path / "nnunet")
    dataset = "Dataset503_Coarse"
    convert_quiz_to_nnunet(
        quiz_builder.standard(n_train=2, n_validation=1, n_test=0),
        folders.raw / dataset,
        tmp_path / "splits.json",
        tmp_path / "cases.csv",
        dataset_name=dataset,
        allow_partial=True,
        split_seed=0,
        selection_fraction=0.5,
    )
    cpu = {**SMALL, "name": "3d_cpu_demo", "patch_size": None, "spacing": [2.5, 1.5, 1.5]}
    plans_file = plan_dataset(
        folders,
        dataset,
        "nnUNetPlannerResEncM",
        "nnUNetResEncUNetMPlans",
        cpu,
        tmp_path / "splits.json",
        1,
        configuration="3d_cpu_demo",
    )
    manager = PlansManager(str(plans_file))
    coarse, full = manager.get_configuration("3d_cpu_demo"), manager.get_configuration("3d_fullres")
    assert coarse.spacing == [2.5, 1.5, 1.5] and coarse.data_identifier == "nnUNetResEncUNetMPlans_3d_cpu_demo"
    own = plans_file.parent / coarse.data_identifier
    assert sorted(p.name.split(".")[0] for p in own.glob("*.pkl")) == sorted(c.case_id for c in quiz_builder.labelled())
    assert not (plans_file.parent / full.data_identifier).exists()
