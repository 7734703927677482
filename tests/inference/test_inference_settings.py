"""The config's inference section as the predictor gets it."""

from pancreas_mtl.inference.run import InferenceSettings

SECTION = {
    "tile_step_size": 0.5,
    "mirror_axes": None,
    "channels_last": False,
    "device": "cpu",
    "preprocessing_workers": "auto",
    "export_workers": 3,
    "resample_on_device": "auto",
}


def test_auto_workers_share_the_jobs_threads_beside_the_models_process():
    for threads, workers in [(1, 1), (2, 1), (3, 1), (8, 3), (16, 7)]:
        settings = InferenceSettings.from_config(SECTION, threads)
        assert settings.preprocessing_workers == workers, threads
        assert settings.export_workers == 3  # a number stays as it is


def test_mirror_axes_become_a_tuple_and_null_stays_all_axes():
    assert InferenceSettings.from_config({**SECTION, "mirror_axes": [0, 2]}, 2).mirror_axes == (0, 2)
    assert InferenceSettings.from_config(SECTION, 2).mirror_axes is None


def test_resampling_on_the_device_is_automatic_on_a_gpu_only():
    assert not InferenceSettings.from_config(SECTION, 2).resamples_on_device()  # device cpu
    assert InferenceSettings.from_config({**SECTION, "resample_on_device": True}, 2).resamples_on_device()
    assert not InferenceSettings.from_config(
        {**SECTION, "device": "cuda", "resample_on_device": False}, 2
    ).resamples_on_device()
