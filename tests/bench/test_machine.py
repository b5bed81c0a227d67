import json

from bench.machine import gpu_peak_tflops, machine_info, machine_slug


def test_machine_info_is_json_and_names_the_cpu():
    info = machine_info()
    json.dumps(info)
    assert info["cpu_cores"] >= 1 and info["versions"]["python"]
    assert info["versions"]["torch"]
    slug = machine_slug(info, use_gpu=False)
    assert slug.startswith("cpu") and slug.replace("-", "").isalnum()


def test_peak_table():
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA H200") == 989.4
    assert gpu_peak_tflops("Some Future GPU") is None
