"""The model registry: names, import paths, and the errors for anything else."""

import pytest

from atomate2_otf.models.base import check_model_name, is_import_path, load_model


def test_import_path_builds_the_model_in_any_process_and_keeps_it_in_the_spec():
    model = load_model("tests.toy_model:ToyModel")
    assert model.spec() == {"name": "tests.toy_model:ToyModel"}
    # a checkpoint's spec rebuilds the same model by the same path
    again = load_model(**model.spec())
    assert type(again) is type(model)


@pytest.mark.parametrize("name", ["nope", "a:b:c", "not a path:x", "", 3, "mod:"])
def test_unknown_names_list_what_is_accepted(name):
    with pytest.raises(ValueError, match="registered models are: .*chgnet.*import path"):
        check_model_name(name)


def test_import_path_to_a_missing_factory_names_it():
    assert is_import_path("tests.toy_model:NoSuchFactory")
    with pytest.raises(ValueError, match="has no 'NoSuchFactory'"):
        load_model("tests.toy_model:NoSuchFactory")
