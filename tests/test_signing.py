from app.core.signing import sign


def test_documented_test_vector():
    body = '{"name":"牛小信","id":10001}'.encode()
    assert (
        sign("fme2na3kdi3ki", "send", "1", "1655710885431", body, "abciiiko2k3")
        == "87c3560d3331ae23f1021e2025722354"
    )


def test_empty_body_leaves_out_body_part():
    assert sign("k", "mt", "7", "1", b"", "s") == sign("k", "mt", "7", "1", None, "s")
    assert sign("k", "mt", "7", "1", b"", "s") != sign("k", "mt", "7", "1", b"{}", "s")
