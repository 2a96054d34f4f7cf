import pytest

from ff_keras.data import readers as datasets
from ff_keras import labels


def test_fairface_reader_merges_train_and_val(data_root):
    df, report = datasets.read_fairface(data_root)
    assert list(df.columns) == list(datasets.CANONICAL_COLUMNS)
    assert len(df) == 20954 and report.n_skipped == 0
    assert df["rel_path"].str.startswith(("fairface/train/", "fairface/val/")).all()
    assert df["age_years"].isna().all()
    assert set(df["race"]) == set(labels.RACES)
    assert df["service_test"].dtype == bool and df["service_test"].any()


def test_utkface_reader_reports_malformed_names(data_root):
    df, report = datasets.read_utkface(data_root)
    skipped = report.skipped["malformed file name"]
    assert "39_1_20170116174525125.jpg.chip.jpg" in skipped
    assert "24_0_1_20170116220224657 .jpg.chip.jpg" in skipped
    assert len(df) + len(skipped) == 23707
    assert set(df["race"]) <= set(labels.UTK_RACES)
    row = df.loc[df.rel_path == "utkface/100_0_0_20170112213500903.jpg.chip.jpg"].iloc[0]
    assert (row.age_years, row.age_bin, row.gender, row.race) == (100.0, "more than 70", "Male", "White")


def test_parse_utk_name_never_guesses():
    assert datasets.parse_utk_name("39_1_20170116174525125.jpg.chip.jpg") is None
    assert datasets.parse_utk_name("5_1_3_20170109142408075.jpg.chip.jpg")["race"] == "Indian"


def _fake_fairface(tmp_path, csv_text, make_files=("val/1.jpg",)):
    folder = tmp_path / "fairface"
    for f in make_files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        (folder / f).write_bytes(b"x")
    (folder / "labels.csv").write_text(csv_text)
    return tmp_path


def test_fairface_bad_csv_errors_name_the_problem(tmp_path):
    root = _fake_fairface(tmp_path, "file,age,gender\nval/1.jpg,3-9,Male\n")
    with pytest.raises(ValueError, match="race"):
        datasets.read_fairface(root, ("labels.csv",))
    root = _fake_fairface(tmp_path, "file,age,gender,race\nval/1.jpg,3-9,Male,Martian\n")
    with pytest.raises(ValueError, match=r"Martian.*labels.csv:2"):
        datasets.read_fairface(root, ("labels.csv",))
    with pytest.raises(FileNotFoundError):
        datasets.read_fairface(root, ("nope.csv",))


def test_fairface_missing_image_is_reported(tmp_path):
    root = _fake_fairface(tmp_path, "file,age,gender,race\nval/1.jpg,3-9,Male,White\nval/2.jpg,0-2,Female,Black\n")
    df, report = datasets.read_fairface(root, ("labels.csv",))
    assert len(df) == 1 and report.skipped == {"image file missing": ["val/2.jpg"]}


def test_data_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.DATA_ROOT_ENV, str(tmp_path))
    assert datasets.resolve_data_root("elsewhere") == tmp_path.resolve()
