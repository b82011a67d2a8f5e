// apb_if: AMBA APB3 bus interface.
// Bundles the select, enable, write, address and data signals of one APB
// slave port with the ready and error responses. The master modport drives
// the request, the slave modport drives the response, and the monitor
// modport only observes.
interface apb_if #(
  parameter int ADDR_W = 12,
  parameter int DATA_W = 32
) (
  input logic pclk,
  input logic presetn
);
  logic              psel;
  logic              penable;
  logic              pwrite;
  logic [ADDR_W-1:0] paddr;
  logic [DATA_W-1:0] pwdata;
  logic [DATA_W-1:0] prdata;
  logic              pready;
  logic              pslverr;

  modport master (
    input  pclk, presetn, prdata, pready, pslverr,
    output psel, penable, pwrite, paddr, pwdata
  );

  modport slave (
    input  pclk, presetn, psel, penable, pwrite, paddr, pwdata,
    output prdata, pready, pslverr
  );

  modport monitor (
    input pclk, presetn, psel, penable, pwrite, paddr, pwdata, prdata, pready, pslverr
  );
endinterface
