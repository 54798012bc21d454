//! Named host lists, usable wherever a policy takes `hosts` (`hosts: ["@control-planes"]`).
//!
//! A list is matched as any host rule is: by the addresses its names resolve to, refreshed
//! with their TTLs. That has two plain limits. An agent that reaches the same service on an
//! address the daemon never saw (`curl --resolve`, DNS over HTTPS, another region's endpoint,
//! a CDN edge that answers other names too) is not matched; and where a provider serves
//! every API from one pool of anycast addresses (Google's `*.googleapis.com`), matching the
//! control plane matches the rest of that pool too. For an agent tree that read a secret,
//! the secrets rule's allow-list (deny everything else) does not have the first limit.

/// The APIs that create, change and delete infrastructure: clouds, hosting and database
/// platforms, DNS and CDN providers, infrastructure-as-code services, and the code host's
/// API (repositories, keys, workflows). Regional endpoints that cannot be listed (AWS's
/// `SERVICE.REGION.amazonaws.com`) are named by their global ones.
pub const CONTROL_PLANES: &[&str] = &[
    // Amazon Web Services: identity, tokens, organisations (global endpoints).
    "iam.amazonaws.com",
    "sts.amazonaws.com",
    "organizations.us-east-1.amazonaws.com",
    "cloudformation.us-east-1.amazonaws.com",
    "ec2.us-east-1.amazonaws.com",
    "rds.us-east-1.amazonaws.com",
    // Google Cloud.
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "sqladmin.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "firebase.googleapis.com",
    // Microsoft Azure Resource Manager.
    "management.azure.com",
    // Hosting and database platforms.
    "backboard.railway.app",
    "backboard.railway.com",
    "api.vercel.com",
    "api.fly.io",
    "api.machines.dev",
    "api.heroku.com",
    "api.supabase.com",
    "api.render.com",
    "api.netlify.com",
    "api.digitalocean.com",
    "api.linode.com",
    "api.hetzner.cloud",
    "console.neon.tech",
    "api.planetscale.com",
    "cloud.mongodb.com",
    // DNS and CDN.
    "api.cloudflare.com",
    // Infrastructure as code.
    "app.terraform.io",
    "api.pulumi.com",
    // The code host's API.
    "api.github.com",
];

/// Every list, by the name a policy writes after `@`.
pub const LISTS: &[(&str, &[&str])] = &[("control-planes", CONTROL_PLANES)];

/// The hosts of list `name` (without the `@`).
pub fn lookup(name: &str) -> Option<&'static [&'static str]> {
    LISTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, hosts)| *hosts)
}

/// The names of every list, `@`-prefixed, for error messages.
pub fn names() -> String {
    LISTS
        .iter()
        .map(|(n, _)| format!("@{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
