from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.status import CODES, ReceiptFact, anomalies, describe_code, fold

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def fact(status, minute, code=None, cost=None):
    codes = {"success": 0, "failed": 11000, "delivered": 11001, "seen": 11002, "expired": 11003}
    return ReceiptFact(
        status=status,
        code=codes[status] if code is None else code,
        message=status,
        received_at=T0 + timedelta(minutes=minute),
        key=f"{status}-{minute}",
        send_time_raw="2023-07-13 15:12:11",
        cost=cost,
    )


def test_empty_set_has_no_status():
    assert fold([]).status is None


def test_seen_before_delivered_is_seen_with_both_first_times():
    state = fold([fact("seen", 1), fact("delivered", 2)])
    assert state.status == "seen"
    assert state.code == 11002
    assert state.times == {
        "seen": T0 + timedelta(minutes=1),
        "delivered": T0 + timedelta(minutes=2),
    }
    assert state.anomalies == ()


def test_late_success_never_moves_back():
    state = fold([fact("delivered", 1), fact("success", 5)])
    assert state.status == "delivered"
    assert state.times["success"] == T0 + timedelta(minutes=5)


def test_repeated_delivered_keeps_first_time():
    state = fold([fact("delivered", 3), fact("delivered", 1), fact("delivered", 2)])
    assert state.status == "delivered"
    assert state.times["delivered"] == T0 + timedelta(minutes=1)


def test_expired_beside_delivered_is_anomaly_not_status():
    state = fold([fact("success", 0), fact("delivered", 1), fact("expired", 2)])
    assert state.status == "delivered"
    assert state.anomalies == ("expired beside delivered",)


def test_failed_beside_seen_and_failed_beside_expired():
    assert fold([fact("failed", 0), fact("seen", 1)]).anomalies == ("failed beside seen",)
    state = fold([fact("failed", 0), fact("expired", 1)])
    assert state.status == "expired"
    assert state.anomalies == ("failed beside expired",)


def test_failed_alone_and_expired_alone():
    assert fold([fact("success", 0), fact("failed", 1, code=1102)]).status == "failed"
    assert fold([fact("success", 0), fact("failed", 1, code=1102)]).code == 1102
    assert fold([fact("success", 0), fact("expired", 1)]).status == "expired"


def test_cost_from_first_receipt_carrying_it():
    early = ("USD", 1.0, 2.0, "Transactional")
    late = ("EUR", 9.0, 9.0, "Promotional")
    state = fold([fact("delivered", 5, cost=late), fact("success", 1, cost=early)])
    assert state.cost == early


def test_anomalies_function():
    assert anomalies(["success", "delivered"]) == ()
    assert anomalies(["expired", "seen", "failed"]) == ("expired beside seen", "failed beside seen")


def test_code_catalogue_and_unknown_code():
    assert set(CODES) == {
        0,
        1100,
        1102,
        9000,
        9001,
        9002,
        9003,
        9004,
        9005,
        9999,
        11000,
        11001,
        11002,
        11003,
    }
    assert describe_code(1102).message == "Insufficient balance"
    assert "recharge" in describe_code(1102).solution
    unknown = describe_code(4242)
    assert unknown.code == 4242 and unknown.message == "Unknown code"


receipt_sets = st.lists(
    st.builds(
        fact,
        st.sampled_from(["success", "delivered", "seen", "failed", "expired"]),
        st.integers(0, 30),
        cost=st.one_of(
            st.none(),
            st.tuples(
                st.sampled_from(["USD", "EUR"]),
                st.floats(0, 100),
                st.floats(0, 100),
                st.sampled_from(["Transactional", "Promotional"]),
            ),
        ),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300)
@given(receipt_sets, st.randoms(use_true_random=False), st.lists(st.integers(0, 7), max_size=6))
def test_any_permutation_with_duplicates_folds_the_same(receipts, rnd, dup_indexes):
    expected = fold(receipts)
    shuffled = list(receipts) + [receipts[i % len(receipts)] for i in dup_indexes]
    rnd.shuffle(shuffled)
    assert fold(shuffled) == expected
    # The status follows the precedence whatever the order.
    present = {r.status for r in receipts}
    for status in ("seen", "delivered", "expired", "failed", "success"):
        if status in present:
            assert expected.status == status
            break
