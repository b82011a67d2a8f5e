module RefModule (
  input clk,
  input clear,
  input event_in,
  output reg seen
);
  /* clear wins over a simultaneous event */
  always @(posedge clk) begin
    if (clear) seen <= 1'b0;
    else if (event_in) seen <= 1'b1;
  end
endmodule
