"""The machine a number was measured on."""

from cpc_tf.training import machine


def test_cpu_model_names_family_and_model():
    fields = {"model name": "AMD EPYC", "cpu family": "25", "model": "17"}
    assert machine.cpu_model(fields) == "AMD EPYC (family 25 model 17)"
    assert machine.cpu_model({"model name": "Intel(R) Xeon(R)"}) == (
        "Intel(R) Xeon(R)"
    )
    assert machine.cpu_model()  # this machine, whatever it is


def test_amx_from_the_flags():
    assert machine.has_amx({"flags": "avx512f amx_bf16 amx_tile"})
    assert not machine.has_amx({"flags": "avx512f avx512_bf16"})
