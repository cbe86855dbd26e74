/* joinedup: Great Expectations' Data Docs index fills its tables with jQuery and
   bootstrap-table from public CDNs. With no network this stand-in draws the same rows as a
   plain table (newest first), each row linking to its page; filters and paging are left out. */
(function () {
  if (window.jQuery) { return; }
  function render(table, options) {
    var columns = options.columns || [];
    var rows = (options.data || []).slice();
    var sortKey = options.sortName;
    columns.forEach(function (c) { if (c.field === options.sortName && c.sortName) { sortKey = c.sortName; } });
    if (sortKey) {
      rows.sort(function (a, b) { return a[sortKey] < b[sortKey] ? -1 : a[sortKey] > b[sortKey] ? 1 : 0; });
      if (options.sortOrder === "desc") { rows.reverse(); }
    }
    var head = "<thead><tr>" + columns.map(function (c) { return "<th>" + c.title + "</th>"; }).join("") + "</tr></thead>";
    var body = rows.map(function (r) {
      var link = r._table_row_link_path ? ' data-href="' + r._table_row_link_path + '" style="cursor:pointer"' : "";
      return "<tr" + link + ">" + columns.map(function (c) { return "<td>" + (r[c.field] || "") + "</td>"; }).join("") + "</tr>";
    }).join("");
    table.innerHTML = head + "<tbody>" + body + "</tbody>";
    table.addEventListener("click", function (e) {
      var row = e.target.closest("tr[data-href]");
      if (row && !e.target.closest("a")) { window.location = row.getAttribute("data-href"); }
    });
  }
  function wrap(nodes) {
    var api = {
      bootstrapTable: function (options) {
        if (typeof options === "object") { nodes.forEach(function (n) { render(n, options); }); }
        return api;
      },
      ready: function (fn) { document.addEventListener("DOMContentLoaded", fn); return api; },
      on: function () { return api; },
      removeClass: function () { return api; },
      data: function () { return undefined; }
    };
    return api;
  }
  window.$ = function (selector) {
    if (selector === document) { return wrap([]); }
    return wrap(Array.prototype.slice.call(document.querySelectorAll(selector)));
  };
})();
