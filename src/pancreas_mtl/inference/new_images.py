"""New CT images of any name and format, as ``pancreas-mtl predict`` takes them: found and checked, staged as
nnU-Net inputs, and each predicted mask written back under the input's own name, in its format, on its grid.

NIfTI images (``.nii.gz``, ``.nii``) are staged byte for byte (a ``.nii`` only compressed), as the workflow's own
conversion stages the quiz's test images, and their masks keep nnU-Net's header. Other formats SimpleITK reads are
staged through SimpleITK, and their masks take the input's origin, spacing and direction exactly (NIfTI stores them
in single precision).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from pancreas_mtl.data.conversion import copy_nifti_as_3d
from pancreas_mtl.errors import UserInputError

#: the file endings taken as images (longest first, so ``.nii.gz`` is not read as ``.gz``)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: what nnU-Net's input of a staged image is called: ``{case_id}_0000.nii.gz``
STAGED_CHANNEL = "_0000.nii.gz"


def image_suffix(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix) and name != suffix), None)


@dataclass(frozen=True)
class NewImage:
    """An input image and the case id it is staged under (``case_0001``, ...: any file name is allowed)."""

    path: Path
    case_id: str

    @property
    def suffix(self) -> str:
        return image_suffix(self.path)  # type: ignore[return-value]

    @property
    def staged_name(self) -> str:
        return f"{self.case_id}{STAGED_CHANNEL}"


def find_images(folder: str | Path) -> list[NewImage]:
    """The images of ``folder`` (by file ending, hidden files skipped), sorted by name, each checked to be one 3D
    volume; a clear error naming every file that is not, or the folder when it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: no such folder")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p))
    if not paths:
        raise UserInputError(f"{folder}: no images (files ending in {', '.join(IMAGE_SUFFIXES)})")
    problems = [problem for problem in map(_volume_problem, paths) if problem]
    if problems:
        raise UserInputError(f"{folder}: not every image is a 3D volume; nothing was predicted", problems)
    return [NewImage(path, f"case_{k:04d}") for k, path in enumerate(paths, start=1)]


def _volume_problem(path: Path) -> str | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        return f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})"
    size = reader.GetSize()
    shape = " x ".join(map(str, size))
    if reader.GetNumberOfComponents() != 1:
        return f"{path}: {reader.GetNumberOfComponents()} values per voxel; a CT volume has one"
    if len(size) > 3 and any(s != 1 for s in size[3:]):
        return f"{path}: a {len(size)}D image ({shape}); one 3D volume per file is needed"
    if len(size) < 3 or min(size[:3]) < 2:
        return f"{path}: a 2D image ({shape}); a 3D volume is needed"
    return None


def read_volume(path: str | Path) -> sitk.Image:
    """The image as a 3D SimpleITK image (a trailing singleton fourth axis dropped)."""
    image = sitk.ReadImage(str(path))
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    return image


def stage_image(image: NewImage, staged_dir: str | Path) -> Path:
    """The image as nnU-Net's input ``{case_id}_0000.nii.gz`` in ``staged_dir``."""
    staged = Path(staged_dir) / image.staged_name
    if image.suffix in NIFTI_SUFFIXES:
        copy_nifti_as_3d(image.path, staged)
    else:
        sitk.WriteImage(read_volume(image.path), str(staged), useCompression=True)
    return staged


def write_mask_like(mask_file: str | Path, image: NewImage, out_file: str | Path) -> Path:
    """Write the predicted mask (nnU-Net's ``.nii.gz`` on the staged image's grid) to ``out_file``, in the input's
    format and on its grid."""
    mask_file, out_file = Path(mask_file), Path(out_file)
    if image.suffix == ".nii.gz":
        shutil.copyfile(mask_file, out_file)
    elif image.suffix == ".nii":
        with gzip.open(mask_file, "rb") as fin, open(out_file, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
    else:
        reference = read_volume(image.path)
        # a fresh image: the NIfTI mask's own metadata (descrip, qto_xyz, ...) has no place in another format
        mask = sitk.GetImageFromArray(sitk.GetArrayFromImage(sitk.ReadImage(str(mask_file), sitk.sitkUInt8)))
        if mask.GetSize() != reference.GetSize():
            raise RuntimeError(f"{mask_file}: mask size {mask.GetSize()} is not {image.path}'s {reference.GetSize()}")
        mask.CopyInformation(reference)
        sitk.WriteImage(mask, str(out_file), useCompression=True)
    return out_file
