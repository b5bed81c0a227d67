import json

from bench.machine import gpu_peak_tflops, machine_info, machine_slug, used_gpu


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


def test_a_stream_bench_on_a_gpu_is_named_after_the_gpu():
    """A pipeline bench's rows are stages (no device): its summary's backend says the GPU."""
    info = {"gpu": {"name": "NVIDIA H200"}, "cpu_cores": 16}
    stream_doc = {"results": [{"stage": "inference"}], "summary": {"backend": {"device": "cuda:0"}}}
    cpu_doc = {"results": [{"stage": "inference"}], "summary": {"backend": {"device": "cpu"}}}
    assert machine_slug(info, used_gpu(stream_doc)) == "h200"
    assert machine_slug(info, used_gpu(cpu_doc)) == "cpu16core"
    assert used_gpu({"results": [{"device": "cuda:0"}]})
