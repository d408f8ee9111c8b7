"""Where the model's tools come from: the built-ins, and MCP servers (`mcp_config`,
`mcp_servers`); `catalog` puts them together for the gateway."""
