"""The IAM evaluator against the rules the IAM user guide states, one case each."""

from __future__ import annotations

from typing import Any

import pytest

from iam.evaluator import Request, arn_matches, condition_holds, evaluate

RULE = "arn:aws:ec2:us-east-1:123456789012:security-group-rule/sgr-0abc"
GROUP = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0abc"


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(**extra: Any) -> dict[str, Any]:
    return {"Sid": "A", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*", **extra}


def test_nothing_allows_by_default() -> None:
    decision = evaluate(_policy(), Request("ec2:CreateTags", RULE))
    assert not decision.allowed
    assert decision.reason == "no statement allows it"


def test_an_explicit_deny_wins_over_an_allow() -> None:
    policy = _policy(_allow(), {**_allow(), "Sid": "D", "Effect": "Deny"})
    decision = evaluate(policy, Request("ec2:CreateTags", RULE))
    assert not decision.allowed
    assert decision.reason == "explicitly denied by D"


def test_a_single_statement_without_the_action_does_not_allow() -> None:
    assert evaluate(_policy(_allow()), Request("ec2:CreateTags", RULE)).allowed
    assert not evaluate(_policy(_allow()), Request("ec2:DeleteTags", RULE)).allowed


def test_actions_match_case_insensitively_with_wildcards() -> None:
    policy = _policy({**_allow(), "Action": ["ec2:describe*", "ec2:?reateTags"]})
    assert evaluate(policy, Request("ec2:DescribeSecurityGroups", "*")).allowed
    assert evaluate(policy, Request("EC2:CreateTags", RULE)).allowed
    assert not evaluate(policy, Request("ec2:DeleteTags", RULE)).allowed
    assert not evaluate(policy, Request("autoscaling:DescribeAutoScalingGroups", "*")).allowed


def test_not_action_allows_everything_else() -> None:
    policy = _policy({"Sid": "N", "Effect": "Allow", "NotAction": "ec2:Delete*", "Resource": "*"})
    assert evaluate(policy, Request("ec2:CreateTags", RULE)).allowed
    assert not evaluate(policy, Request("ec2:DeleteTags", RULE)).allowed


def test_resources_match_per_arn_segment() -> None:
    assert arn_matches("arn:aws:ec2:*:*:security-group-rule/*", RULE)
    assert not arn_matches("arn:aws:ec2:*:*:security-group-rule/*", GROUP)
    assert not arn_matches("arn:aws:ec2:us-west-2:*:security-group-rule/*", RULE)
    # A wildcard in one segment does not swallow the next ones.
    assert not arn_matches("arn:aws:ec2:us-*", RULE)
    assert arn_matches("*", RULE)
    assert arn_matches("arn:aws:ec2:us-east-1:123456789012:security-group/sg-0ab?", GROUP)
    # ARNs are case-sensitive.
    assert not arn_matches("arn:aws:ec2:us-east-1:123456789012:security-group/SG-0ABC", GROUP)


def test_not_resource_allows_every_other_resource() -> None:
    policy = _policy(
        {
            "Sid": "N",
            "Effect": "Allow",
            "Action": "ec2:*",
            "NotResource": "arn:aws:ec2:*:*:security-group/*",
        }
    )
    assert evaluate(policy, Request("ec2:CreateTags", RULE)).allowed
    assert not evaluate(policy, Request("ec2:CreateTags", GROUP)).allowed


def test_every_condition_must_hold_and_values_of_one_key_are_alternatives() -> None:
    policy = _policy(
        _allow(
            Condition={
                "StringEquals": {
                    "ec2:CreateAction": [
                        "AuthorizeSecurityGroupIngress",
                        "AuthorizeSecurityGroupEgress",
                    ]
                },
                "StringLike": {"aws:RequestTag/hardening.circleci.com/owner": "circleci/*"},
            }
        )
    )
    ok = {
        "ec2:CreateAction": "AuthorizeSecurityGroupEgress",
        "aws:RequestTag/hardening.circleci.com/owner": "circleci/server",
    }
    assert evaluate(policy, Request("ec2:CreateTags", RULE, ok)).allowed
    wrong_owner = {**ok, "aws:RequestTag/hardening.circleci.com/owner": "other/server"}
    assert not evaluate(policy, Request("ec2:CreateTags", RULE, wrong_owner)).allowed
    # A standalone CreateTags has no ec2:CreateAction: the tag-on-create statement does not match.
    standalone = {"aws:RequestTag/hardening.circleci.com/owner": "circleci/server"}
    assert not evaluate(policy, Request("ec2:CreateTags", RULE, standalone)).allowed


def test_condition_key_names_are_case_insensitive_values_are_not() -> None:
    ctx = {"EC2:CreateAction": "AuthorizeSecurityGroupIngress"}
    assert condition_holds("StringEquals", "ec2:createaction", "AuthorizeSecurityGroupIngress", ctx)
    assert not condition_holds(
        "StringEquals", "ec2:CreateAction", "authorizesecuritygroupingress", ctx
    )
    assert condition_holds(
        "StringEqualsIgnoreCase", "ec2:CreateAction", "authorizesecuritygroupingress", ctx
    )


def test_a_missing_key_fails_a_positive_operator_unless_if_exists() -> None:
    assert not condition_holds("StringEquals", "aws:ResourceTag/owner", "me", {})
    assert condition_holds("StringEqualsIfExists", "aws:ResourceTag/owner", "me", {})
    assert not condition_holds(
        "StringEqualsIfExists", "aws:ResourceTag/owner", "me", {"aws:ResourceTag/owner": "you"}
    )
    assert condition_holds(
        "StringEqualsIfExists", "aws:ResourceTag/owner", "me", {"aws:ResourceTag/owner": "me"}
    )


def test_a_missing_key_satisfies_a_negated_operator() -> None:
    assert condition_holds("StringNotEquals", "aws:ResourceTag/owner", "you", {})
    assert condition_holds(
        "StringNotEquals", "aws:ResourceTag/owner", "you", {"aws:ResourceTag/owner": "me"}
    )
    assert not condition_holds(
        "StringNotEquals", "aws:ResourceTag/owner", "you", {"aws:ResourceTag/owner": "you"}
    )
    assert not condition_holds("StringNotLike", "k", "y*", {"k": "you"})


def test_for_all_values_needs_every_request_value_and_holds_for_an_absent_key() -> None:
    allowed = ["hardening.circleci.com/*", "app.kubernetes.io/managed-by"]
    mine = {"aws:TagKeys": ["hardening.circleci.com/owner", "app.kubernetes.io/managed-by"]}
    extra = {"aws:TagKeys": ["hardening.circleci.com/owner", "Name"]}
    assert condition_holds("ForAllValues:StringLike", "aws:TagKeys", allowed, mine)
    assert not condition_holds("ForAllValues:StringLike", "aws:TagKeys", allowed, extra)
    assert condition_holds("ForAllValues:StringLike", "aws:TagKeys", allowed, {})
    assert condition_holds("ForAllValues:StringLike", "aws:TagKeys", allowed, {"aws:TagKeys": []})
    assert not condition_holds(
        "ForAllValues:StringEquals", "aws:TagKeys", ["hardening.circleci.com/*"], mine
    )


def test_for_any_value_needs_one_matching_value_and_fails_for_an_absent_key() -> None:
    ctx = {"aws:TagKeys": ["Name", "hardening.circleci.com/owner"]}
    assert condition_holds(
        "ForAnyValue:StringEquals", "aws:TagKeys", "hardening.circleci.com/owner", ctx
    )
    assert not condition_holds("ForAnyValue:StringEquals", "aws:TagKeys", "team", ctx)
    assert not condition_holds("ForAnyValue:StringLike", "aws:TagKeys", "*", {})


def test_null_tests_presence() -> None:
    assert condition_holds("Null", "ec2:CreateAction", "true", {})
    assert not condition_holds("Null", "ec2:CreateAction", "true", {"ec2:CreateAction": "X"})
    assert condition_holds("Null", "ec2:CreateAction", "false", {"ec2:CreateAction": "X"})
    assert not condition_holds("Null", "ec2:CreateAction", "false", {})


def test_arn_and_bool_operators() -> None:
    ctx = {"ec2:Vpc": "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1", "aws:SecureTransport": True}
    assert condition_holds("ArnLike", "ec2:Vpc", "arn:aws:ec2:*:*:vpc/*", ctx)
    assert condition_holds(
        "ArnEquals", "ec2:Vpc", "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-1", ctx
    )
    assert not condition_holds("ArnLike", "ec2:Vpc", "arn:aws:ec2:*:*:vpc/vpc-2", ctx)
    assert condition_holds("ArnNotLike", "ec2:Vpc", "arn:aws:ec2:*:*:vpc/vpc-2", ctx)
    assert condition_holds("Bool", "aws:SecureTransport", "true", ctx)
    assert not condition_holds("Bool", "aws:SecureTransport", False, ctx)


def test_a_single_valued_operator_on_a_multivalued_key_matches_any_value() -> None:
    ctx = {"aws:TagKeys": ["a", "b"]}
    assert condition_holds("StringEquals", "aws:TagKeys", "b", ctx)
    assert not condition_holds("StringNotEquals", "aws:TagKeys", "b", ctx)


def test_an_operator_it_does_not_know_raises_instead_of_guessing() -> None:
    with pytest.raises(NotImplementedError, match="NumericLessThan"):
        condition_holds("NumericLessThan", "k", "1", {"k": "0"})
    with pytest.raises(NotImplementedError, match="ForEachValue"):
        condition_holds("ForEachValue:StringEquals", "k", "1", {"k": "0"})


def test_the_decision_names_the_statements_that_allowed() -> None:
    policy = _policy(_allow(), {**_allow(), "Sid": "B"})
    decision = evaluate(policy, Request("ec2:CreateTags", RULE))
    assert decision.allowed and decision.statements == ("A", "B")
