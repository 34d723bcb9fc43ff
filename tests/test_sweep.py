"""The size sweep: nested whole-subject subsets, size folders, runs side by side, and the criteria
table (criteria.csv) of hand-made run folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import common, sweep


def train_table(slices_per_subject=(5, 7, 4), first_rank=0) -> pd.DataFrame:
    rows = []
    for rank, n in enumerate(slices_per_subject, start=first_rank):
        for k in range(n):
            rows.append({"subject": f"S{rank}", "slice": 40 + 2 * k, "split_rank": rank})
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)  # any row order
    return table.assign(index=np.arange(len(table)))


def test_centre_out_prefixes_are_contiguous_blocks_around_the_middle():
    for n in range(1, 9):
        order = sweep.centre_out(range(n))
        assert sorted(order) == list(range(n))
        for m in range(1, n + 1):
            block = sorted(order[:m])
            assert block == list(range(block[0], block[0] + m))
            assert (n - 1) // 2 in block


def test_subsets_are_nested_whole_subjects_in_split_order():
    table = train_table()
    subsets = sweep.nested_subsets(table, [3, 5, 8, 16])
    assert [len(v) for v in subsets.values()] == [3, 5, 8, 16]
    sets = [set(v.tolist()) for v in subsets.values()]
    assert all(a < b for a, b in zip(sets, sets[1:]))  # each contains the smaller ones
    by_index = table.set_index("index")
    assert set(by_index.loc[subsets[5], "subject"]) == {"S0"}  # the first subject whole
    assert set(by_index.loc[subsets[8], "subject"]) == {"S0", "S1"}
    slab = by_index.loc[subsets[8]]
    s1 = sorted(slab[slab.subject == "S1"].slice)  # 3 contiguous slices around S1's middle (46)
    assert s1 == [44, 46, 48]
    with pytest.raises(ValueError, match="asks for 17 training images but the training split has 16"):
        sweep.nested_subsets(table, [17])
    with pytest.raises(ValueError, match="positive"):
        sweep.nested_subsets(table, [0, 3])


def test_x_ray_sizes_take_one_image_per_patient_while_patients_last():
    rows = [{"subject": f"P{rank}", "slice": -1, "split_rank": rank} for rank, n in enumerate((3, 1, 2)) for _ in range(n)]
    table = pd.DataFrame(rows).assign(index=np.arange(6))
    by_index = table.set_index("index")
    for rule in sweep.RULES:
        subsets = sweep.nested_subsets(table, [2, 3, 5], rule=rule)
        assert sorted(by_index.loc[subsets[2], "subject"]) == ["P0", "P1"]
        assert sorted(by_index.loc[subsets[3], "subject"]) == ["P0", "P1", "P2"]  # 3 images, 3 patients
        assert sorted(by_index.loc[subsets[5], "subject"]) == ["P0", "P0", "P1", "P2", "P2"]
    assert not sweep.is_planar(train_table()) and sweep.is_planar(table)


def test_one_slice_per_subject_takes_every_subject_s_middle_first():
    table = train_table()
    subsets = sweep.nested_subsets(table, [3, 6], rule="one_per_subject")
    by_index = table.set_index("index")
    first = by_index.loc[subsets[3]]
    assert sorted(first.subject) == ["S0", "S1", "S2"]  # one slice of each subject
    assert dict(zip(first.subject, first.slice)) == {"S0": 44, "S1": 46, "S2": 42}  # their middle slices
    assert set(subsets[3]) < set(subsets[6])
    with pytest.raises(ValueError, match="subset rule"):
        sweep.image_order(table, "random")


def make_results(tmp_path):
    results = tmp_path / "results" / "toy"
    data = results / "data"
    data.mkdir(parents=True)
    table = train_table()
    rng = np.random.default_rng(0)
    np.save(data / "train.npy", rng.integers(0, 256, (len(table), 2, 8, 8), dtype=np.uint8))
    common.write_csv(data / "train.csv", table)
    np.save(data / "test.npy", rng.integers(0, 256, (3, 2, 8, 8), dtype=np.uint8))
    common.write_csv(data / "test.csv", pd.DataFrame({"index": range(3), "subject": "T9", "slice": [1, 2, 3]}))
    common.write_json(data / "meta.json", {"channels": ["a", "b"], "image_size": 8, "n_train": len(table)})
    return results


def test_size_folders_hold_the_subset_and_the_shared_held_out_set(tmp_path):
    results = make_results(tmp_path)
    assert sweep.run_dirs(results) == {"all": results}
    sizes = sweep.prepare(results, [8, 3])
    assert sizes["size"].tolist() == [3, 8] and sizes["n_subjects"].tolist() == [1, 2]
    runs = sweep.run_dirs(results)
    assert list(runs) == ["n00003", "n00008"]
    full = np.load(results / "data" / "train.npy")
    test = np.load(results / "data" / "test.npy")
    for folder in runs.values():
        train = np.load(folder / "data" / "train.npy")
        index = pd.read_csv(folder / "data" / "train.csv")
        assert np.array_equal(train, full[index["full_index"]]) and index["index"].tolist() == list(range(len(train)))
        assert np.array_equal(np.load(folder / "data" / "test.npy"), test)
        assert set(index.subject).isdisjoint(pd.read_csv(folder / "data" / "test.csv").subject)
        meta = common.read_json(folder / "data" / "meta.json")
        assert meta["n_train"] == len(train) and meta["channels"] == ["a", "b"]
    both = sweep.prepare(results, [3], ["whole_subjects", "one_per_subject"])
    assert both["label"].tolist() == ["n00003", "n00003_one_per_subject"] and both["n_subjects"].tolist() == [1, 3]
    # effective size: a subject's 3 middle slices within ±7 of each other are one picture at 8² (32 mm pixels)
    assert both["n_distinct"].tolist() == [1, 3]
    # without a sweep the one run is the results folder again
    assert sweep.prepare(results, None) is None and sweep.run_dirs(results) == {"all": results}
