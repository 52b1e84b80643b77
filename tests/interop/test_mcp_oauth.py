"""The official MCP Python SDK's OAuth client against an MCP proxy with `oauth = true`: it finds the
gateway's authorization server from the 401, registers itself, sends its user to the sign-in page
(played here by a scripted browser), exchanges the code with PKCE, and uses the proxy as that
user; a second client run refreshes its token instead of signing in again."""

import time
import urllib.parse

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from conftest import McpGateway, mcp_proxy_toml, require_mcp_gateway

PROXY = "mcp-oauth"
USER, PASSWORD = "mcp-user", "member-password-0001"
REDIRECT = "http://127.0.0.1:9/callback"


class Storage:
    def __init__(self):
        self.tokens, self.client = None, None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


class Browser:
    """The user's browser: opens the sign-in page the SDK redirects to, signs in, and hands the redirect's
    parameters back to the SDK's callback."""

    def __init__(self):
        self.result = None
        self.pages = 0

    async def redirect(self, url):
        self.pages += 1
        async with httpx.AsyncClient(follow_redirects=False, timeout=10) as http:
            page = await http.get(url)
            assert page.status_code == 200, page.text
            assert "Sign in to " + PROXY in page.text
            params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
            done = await http.post(url.split("?")[0], data={**params, "username": USER, "password": PASSWORD})
            assert done.status_code == 303, done.text
            location = done.headers["location"]
            assert location.startswith(REDIRECT), location
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
            self.result = AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    async def callback(self):
        assert self.result is not None
        return self.result


def provider_for(url, storage, browser):
    return OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[REDIRECT],
            client_name="SDK interop",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=browser.redirect,
        callback_handler=browser.callback,
    )


async def echo_through(url, provider):
    async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(30.0, read=60.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None, read_timeout_seconds=30) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "echo" in names, names
            result = await c.call_tool("echo", {"message": "hello over oauth"})
            return "".join(getattr(b, "text", "") for b in result.content)


def test_the_sdks_oauth_client_signs_in_through_the_gateway_and_refreshes(everything):
    require_mcp_gateway()
    gw = McpGateway(mcp_proxy_toml(PROXY, everything, "auto") + "oauth = true\n")
    try:
        gw.call("POST", "/api/v1/users", {"username": USER, "password": PASSWORD, "role": "member",
                                          "must_change_password": False})
        url = gw.mcp_url(PROXY)
        storage, browser = Storage(), Browser()

        async def scenario():
            with anyio.fail_after(120):
                provider = provider_for(url, storage, browser)
                said = await echo_through(url, provider)
                assert "hello over oauth" in said, said
                assert browser.pages == 1
                # The token's hour is over (as the client reckons it): the SDK refreshes, no sign-in.
                first = storage.tokens.access_token
                provider.context.token_expiry_time = time.time() - 1
                said = await echo_through(url, provider)
                assert "hello over oauth" in said, said
                return first

        first = anyio.run(scenario)
        assert storage.tokens.access_token != first, "the expired token was refreshed"
        assert storage.client.client_id.startswith("pcl_")
        assert storage.tokens.access_token.startswith("pat_")
        rows = gw.requests(f"proxy={PROXY}&status=200", 2)
        assert rows and all(r["key_name"] == USER for r in rows), rows
        assert browser.pages == 1, "the second run refreshed instead of signing in"
    finally:
        gw.stop()
