/*
 * proxy — the gateway's data path: one libev loop owning the listener, every
 * client and upstream socket, TLS on both sides, login, relay with
 * backpressure, cancel mapping, drain on SIGTERM and reload on SIGHUP.
 *
 * The only entry point: run the gateway for the config at `config_path`
 * (already validated once by the caller) until it is told to stop.
 * Returns the process exit status.
 */
#ifndef BULWARK_PROXY_H
#define BULWARK_PROXY_H

int proxy_serve(const char *config_path);

#endif
