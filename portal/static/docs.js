// The API's OpenAPI docs, drawn by Swagger UI served from the swagger-ui-bundle package (no CDN).
"use strict";
window.SwaggerUIBundle({ url: "/docs/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
