"""The authority matrix at the agent level, over a real broker (amqtt and Mosquitto).

Device ``r`` runs a real agent and holds the seeds of its neighbours ``a`` and ``b``; ``c`` is another
certified device. The *subject* of an order is the device it is about:

=================  ===================  =====================  ==========================
signer             unlearn self         unlearn other          neighbour change
                   (forget r)           (forget a)             (a's list drops r)
=================  ===================  =====================  ==========================
the subject        accepted (r signs)   accepted (a signs)     accepted (a signs)
admin              accepted             accepted               rejected (lists are the device's word)
another device c   rejected             rejected               rejected
unknown key        rejected             rejected               rejected
=================  ===================  =====================  ==========================

"unknown key" signs under the subject's id with a key nobody certified; a signer id nobody
certified is parked until a hello that never comes, and changes nothing either. Accepted is observed
as the effect (r forgotten; a's seed gone with a receipt; r's retained seed for a cleared), rejected
as a counted, audited rejection with nothing changed.
"""

from __future__ import annotations

from hdus_edge.reliability.cases_hostile import (
    ORDERS,
    POLICY,
    SIGNERS,
    authority_matrix,
)


def test_every_cell_of_the_authority_matrix_follows_the_policy(tmp_path, broker_url):
    # Execute
    result = authority_matrix(tmp_path, broker_url)
    # Assert: 12 cells, each as the policy says; the uncertified signer is parked, not obeyed.
    assert result["cells"] == len(SIGNERS) * len(ORDERS) == 12
    observed = {(row["signer"], order): row[order] == "accepted" for row in result["matrix"] for order in ORDERS}
    assert observed == POLICY, result["violation_examples"]
    assert result["violations"] == 0
    assert result["uncertified_signer_parked"] is True
