"""Images alone, for the image tokenizer: the unique images (by `image_id`) of a manifest or a MindRecord, decoded,
resized, centre-cropped and normalised by the same C++ vision ops as the other pipelines, in batches of column
`image` float32 (B, 3, S, S).

Which images a training batch holds is a pure function of (seed, epoch, batch index) (`epoch_indices`), so a resumed
run reads exactly what the uninterrupted one would have.
"""
import os

import numpy as np
import mindspore.dataset as ds

from src.data.manifest import read_manifest
from src.data.pretrain_data import epoch_indices, open_mindrecord
from src.data.transforms import image_transforms
from src.errors import UserError

MANIFEST_SUFFIXES = (".jsonl", ".json")


class _FileBytes:
    """Random-access source of encoded image files: item i is (uint8 bytes of paths[i],)."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __getitem__(self, index):
        return (np.fromfile(self.paths[index], dtype=np.uint8),)

    def __len__(self):
        return len(self.paths)


class ImageSource:
    """The unique images of a manifest (`.jsonl`) or a MindRecord (its --out name or first shard file).

    `rules`: the image keywords of `src.data.transforms.image_rules` (background, resize, pad_color).
    `ids[i]` is the image_id of image i; `dataset(positions, ...)` reads the images at `positions` in that order.
    """

    def __init__(self, path, workers=2, rules=None):
        if not path:
            raise UserError("no image data given: set data.train (and data.val) to a manifest .jsonl or a MindRecord")
        self.path, self.workers = path, int(workers)
        self.rules = dict(rules or {})  # src.data.transforms.image_rules(cfg.data); {} = the defaults
        if path.endswith(MANIFEST_SUFFIXES):
            self._files, self._records = self._from_manifest(path), None
            self.ids = list(self._files)
        else:
            self._files, self._records = None, self._from_mindrecord(path)
            self.ids = list(self._records)
        if not self.ids:
            raise UserError(f"{path} holds no images")

    def __len__(self):
        return len(self.ids)

    @staticmethod
    def _from_manifest(path):
        files = {}
        for sample in read_manifest(path):
            if "image_path" not in sample:
                raise UserError(f"{path}: sample {sample['id']!r} has no 'image'; the image tokenizer needs images")
            files.setdefault(sample["image_id"], sample["image_path"])
        missing = [p for p in files.values() if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{path}: {len(missing)} image file(s) not found, e.g. {missing[0]}; fix the manifest's "
                            "image paths")
        return files

    def _from_mindrecord(self, path):
        self._info = open_mindrecord(path, None)
        if not self._info.meta.get("has_image"):
            raise UserError(f"MindRecord {path} holds no images")
        reader = ds.MindDataset(list(self._info.files), columns_list=["image_id"], shuffle=False)
        records = {}  # image_id -> position of its first record, in file order
        for position, row in enumerate(reader.create_dict_iterator(num_epochs=1, output_numpy=True)):
            records.setdefault(str(row["image_id"]), position)
        return records

    def dataset(self, positions, image_size, batch_size, train=False, drop_remainder=False, augment=None):
        """Batches of column `image` for the images at `positions` (indices into `ids`), in order.

        `augment` (train only): dict of image_transforms keywords (random_resized_crop, crop_scale, hflip).
        """
        positions = np.asarray(positions, np.int64)
        if self._files is not None:
            paths = [self._files[self.ids[i]] for i in positions]
            data = ds.GeneratorDataset(_FileBytes(paths), column_names=["image"], shuffle=False,
                                       num_parallel_workers=1)
        else:
            records = [self._records[self.ids[i]] for i in positions]
            data = ds.MindDataset(list(self._info.files), columns_list=["image"],
                                  sampler=ds.SubsetSampler(records), num_parallel_workers=self.workers)
        transforms = image_transforms(image_size, train=train, **(augment or {"random_resized_crop": False}),
                                      **self.rules)
        data = data.map(transforms, input_columns=["image"], num_parallel_workers=self.workers)
        return data.batch(batch_size, drop_remainder=drop_remainder)

    def training_dataset(self, image_size, batch_size, seed, epoch, start_batch=0, rank=0, world=1, augment=None):
        """Epoch `epoch` of shuffled whole batches (this rank's share) from batch `start_batch` on."""
        order = epoch_indices(len(self), seed, epoch, rank, world, drop_remainder_to=batch_size)
        if not 0 <= start_batch < len(order) // batch_size:
            raise UserError(f"cannot resume at batch {start_batch}: an epoch of {self.path} has "
                            f"{len(order) // batch_size} batches")
        return self.dataset(order[start_batch * batch_size:], image_size, batch_size, train=True,
                            drop_remainder=True, augment=augment)
